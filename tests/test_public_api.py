"""The public surface of each layer is pinned: an accidental change of __all__ fails here."""

import shmlaunch.launch as launch
import shmlaunch.nodes as nodes


def test_nodes_public_api_is_pinned():
    assert sorted(nodes.__all__) == sorted([
        "DEEP_CHECK_MARK", "ENV_NODE", "ENV_START_DIR", "EXIT_BAD_CONFIG", "EXIT_FAILED", "EXIT_OK", "EXIT_SETUP_FAILED", "HEARTBEAT", "Node",
        "NodeClassError", "NodeError", "NodeLaunch", "NodeSetupError", "Param", "ParamError", "Subscription", "Timer", "configure_logging",
        "declared_params", "describe_params", "heartbeat_age", "load_node_class", "parse_cli_value", "ready_name",
        "resolve_params", "run_node", "start_dir",
    ])
    assert all(hasattr(nodes, name) for name in nodes.__all__)


def test_recording_format_api_is_pinned():
    from shmlaunch.nodes import recording

    assert sorted(recording.__all__) == sorted([
        "ANNOTATIONS_SUFFIX", "ARRAY", "COMPRESSIONS", "ENVELOPE", "GESTURE_TEXT", "IMAGE", "MAX_MESSAGE", "NDARRAY_ENCODING",
        "PROFILE", "RECORD_EXTRA", "RECORDING_MODE", "SKELETON", "SOURCE_SEQ_FIELD", "BadMessage", "ChannelPlan", "Played", "RecordedChannel",
        "RecordingError", "RecordingReader", "channel_of", "check_record_extra", "config_from_metadata", "create_recording", "encode",
        "image_frames", "is_image", "plan_channels", "printable", "recording_files", "topic_metadata",
    ])
    assert all(hasattr(recording, name) for name in recording.__all__)
    from shmlaunch.nodes import mcap_records

    assert sorted(mcap_records.__all__) == sorted(["MAGIC", "MAX_CHUNK", "MAX_RECORD", "RecordStream", "Summary", "open_recording",
                                                   "read_summary"])
    assert all(hasattr(recording, name) for name in recording.__all__)


def test_launch_public_api_is_pinned():
    assert sorted(launch.__all__) == sorted([
        "STOP_TIMEOUT", "Graph", "GraphRunningError", "LaunchFileError", "Launcher", "NoRoomError", "NodeSpec", "Printer", "Supervisor", "TopicSpec",
        "check_graph", "load_launch_file", "parse_launch_args",
    ])
    assert all(hasattr(launch, name) for name in launch.__all__)


def test_platform_layer_seam_is_pinned():
    from shmlaunch import _platform as backend

    assert sorted(backend.__all__) == sorted([
        "AVAILABLE", "CHILD_EXIT_SIGNAL", "SHM_ROOT", "STOP_SIGNALS", "UNAVAILABLE_REASON", "USER_ID", "ByteLock", "Directory", "LoanBase",
        "MessageBase", "ProcessInfo", "ReadCursor", "WriteCursor", "adopted_orphans", "allowed_cpus", "become_subreaper", "buffer_address",
        "child_options", "cpu_features", "detached_options", "free_bytes", "futex_wait", "futex_wake", "group_alive", "listen_for_stop", "map_file",
        "may_raise_priority", "own_priority", "place_child", "process_info", "process_start_time", "raise_open_file_limit", "reap_orphans",
        "request_stop",
        "reserve", "stop_group", "stop_process", "wait_any", "TRACING", "trace_event", "trace_start", "trace_stop",
        "CREATE_NEW_FLAGS", "OPEN_READ_FLAGS", "notify_service_manager", "wait_for_signal",
    ])
    assert all(hasattr(backend, name) for name in backend.__all__)


def test_trace_analysis_api_is_pinned():  # (the transport's __all__ is pinned in test_layout_and_space.py)
    from shmlaunch.nodes import hops

    assert sorted(hops.__all__) == sorted(["MATCH_WINDOW", "TRACE_TABLE", "WINDOW", "HopTable", "Process", "Series", "format_summary",
                                           "percentile"])
    assert all(hasattr(hops, name) for name in hops.__all__)
