"""Where the tests find the 24 labelled hand photos (../shared/testdata/hands, see its NOTICE.md),
and the mark that skips a test needing them, with the reason, when they are absent."""

from __future__ import annotations

from pathlib import Path

import pytest

HANDS = Path(__file__).resolve().parent.parent.parent / "shared" / "testdata" / "hands"
needs_photos = pytest.mark.skipif(not HANDS.is_dir(), reason=f"the 24 labelled hand photos are not at {HANDS} "
                                  "(README, 'The test photos': tests/hand_photos.txt lists them)")
