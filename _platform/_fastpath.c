/* The hot path of pool topics on Linux: one C call per receive and per publish.
 *
 * The protocol is transport/LAYOUT.md; the Python side (_reader.py, _writer.py) opens topics,
 * checks them and handles the rare cases. This module does the steps every message takes:
 *   ReadCursor.receive(timeout)  look at the futex word (sleeping on it, GIL released, while it
 *                                has not moved), take the slot's shared lock, check the state
 *                                word and hand out a Message with its read-only view; the rare
 *                                cases (torn, already seen, filtered readers) go back to Python
 *   Message.release()            drop the hold (the slot's lock with the last one), update the
 *                                reader's table entry
 *   WriteCursor.publish(data)    copy, header, state word even, unlock, wake word, futex wake,
 *                                and the next slot locked ahead; Loan's publish is the same commit
 *   lock(fd, byte, kind)         a non-blocking open-file-description byte-range lock
 *   futex_wait, futex_wake, futex_wait_any   the wake-ups, for the node runtime's many-topic wait
 * Every call that may sleep releases the GIL; every copy of a frame (1 MiB or more) too.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "layout.h" /* generated from transport/_layout.py */

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif
#define MAX_WAITV 128
#define BIG_COPY (1 << 20)

struct futex_waitv_entry {
    uint64_t val;
    uint64_t uaddr;
    uint32_t flags;
    uint32_t reserved;
};

static int ofd_lock(int fd, long long byte, short type) {
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    if (fcntl(fd, F_OFD_SETLK, &fl) == 0) return 1;
    if (errno == EAGAIN || errno == EACCES) return 0;
    return -1;
}

static PyObject *py_lock(PyObject *self, PyObject *args) {
    int fd, kind;
    long long byte;
    if (!PyArg_ParseTuple(args, "iLi", &fd, &byte, &kind)) return NULL;
    short type = kind == 0 ? F_RDLCK : kind == 1 ? F_WRLCK : F_UNLCK;
    int r = ofd_lock(fd, byte, type);
    if (r < 0) return PyErr_SetFromErrno(PyExc_OSError);
    return PyBool_FromLong(r);
}


static int64_t realtime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double monotonic_s(void) { return (double)monotonic_ns() / 1e9; }

/* The slot header (LAYOUT.md): state, length, source_ns, publish_ns, generation, source_seq. */
typedef struct {
    uint64_t state, length;
    int64_t source_ns, publish_ns;
    uint64_t generation, source_seq;
} SlotHeader;

static void read_header(const uint8_t *h, SlotHeader *out) {
    out->state = __atomic_load_n((const uint64_t *)(h + SLOT_STATE_OFFSET), __ATOMIC_ACQUIRE);
    memcpy(&out->length, h + SLOT_LENGTH_OFFSET, SLOT_LENGTH_SIZE);
    memcpy(&out->source_ns, h + SLOT_SOURCE_NS_OFFSET, SLOT_SOURCE_NS_SIZE);
    memcpy(&out->publish_ns, h + SLOT_PUBLISH_NS_OFFSET, SLOT_PUBLISH_NS_SIZE);
    memcpy(&out->generation, h + SLOT_GENERATION_OFFSET, SLOT_GENERATION_SIZE);
    memcpy(&out->source_seq, h + SLOT_SOURCE_SEQ_OFFSET, SLOT_SOURCE_SEQ_SIZE);
}

/* ===================================================================== tracing
 * While a tracer is attached to the graph (transport/_trace.py), this process's records go to
 * its ring in shared memory (the layout is _layout.py's trace ring): a 64-byte record per
 * publish, receive and release, written in the call that does the step. Off, each step pays
 * one test of `trace_base`. Every write happens with the GIL held, so the ring has one writer. */
static uint8_t *trace_base = NULL;
static uint64_t trace_mask = 0;


/* One record: the step, the topic (its header's wake_id), the message, and for a receive the
 * messages this reader lost since its previous receive (overwritten, stale, taken by a replica). */
static void trace_put(uint32_t kind, uint64_t topic, uint32_t entry, uint64_t seq, uint64_t source_seq, int64_t stamp,
                      uint64_t generation, const uint32_t lost[3]) {
    uint64_t head = __atomic_load_n((uint64_t *)(trace_base + TRACE_HEADER_HEAD_OFFSET), __ATOMIC_RELAXED);
    uint8_t *r = trace_base + TRACE_HEADER_SIZE + (head & trace_mask) * TRACE_RECORD_SIZE;
    int64_t now = monotonic_ns();
    uint16_t kind16 = (uint16_t)kind, entry16 = (uint16_t)entry;
    uint32_t generation32 = (uint32_t)generation;
    memcpy(r + TRACE_RECORD_NS_OFFSET, &now, TRACE_RECORD_NS_SIZE);
    memcpy(r + TRACE_RECORD_TOPIC_OFFSET, &topic, TRACE_RECORD_TOPIC_SIZE);
    memcpy(r + TRACE_RECORD_SEQ_OFFSET, &seq, TRACE_RECORD_SEQ_SIZE);
    memcpy(r + TRACE_RECORD_SOURCE_SEQ_OFFSET, &source_seq, TRACE_RECORD_SOURCE_SEQ_SIZE);
    memcpy(r + TRACE_RECORD_STAMP_NS_OFFSET, &stamp, TRACE_RECORD_STAMP_NS_SIZE);
    memcpy(r + TRACE_RECORD_KIND_OFFSET, &kind16, TRACE_RECORD_KIND_SIZE);
    memcpy(r + TRACE_RECORD_ENTRY_OFFSET, &entry16, TRACE_RECORD_ENTRY_SIZE);
    memcpy(r + TRACE_RECORD_GENERATION_OFFSET, &generation32, TRACE_RECORD_GENERATION_SIZE);
    if (lost) memcpy(r + TRACE_RECORD_LOST_OFFSET, lost, TRACE_RECORD_LOST_SIZE);
    else memset(r + TRACE_RECORD_LOST_OFFSET, 0, TRACE_RECORD_LOST_SIZE);
    memset(r + TRACE_RECORD_RESERVED_60_OFFSET, 0, TRACE_RECORD_RESERVED_60_SIZE);
    __atomic_store_n((uint64_t *)(trace_base + TRACE_HEADER_HEAD_OFFSET), head + 1, __ATOMIC_RELEASE);
}

/* trace_start(address, capacity): records go to the ring mapped at address (capacity records, a power of two). */
static PyObject *py_trace_start(PyObject *self, PyObject *args) {
    unsigned long long addr, capacity;
    if (!PyArg_ParseTuple(args, "KK", &addr, &capacity)) return NULL;
    if (capacity == 0 || (capacity & (capacity - 1)) != 0) return PyErr_Format(PyExc_ValueError, "trace ring capacity %llu is not a power of two", capacity);
    trace_mask = capacity - 1;
    trace_base = (uint8_t *)(uintptr_t)addr;
    Py_RETURN_NONE;
}

/* trace_stop(): no more records (the caller unmaps the ring afterwards). */
static PyObject *py_trace_stop(PyObject *self, PyObject *unused) {
    trace_base = NULL;
    Py_RETURN_NONE;
}

/* A topic's identity in trace records: its header's wake_id. */
static uint64_t topic_id(const uint8_t *header) {
    uint64_t id;
    memcpy(&id, header + HEADER_WAKE_ID_OFFSET, HEADER_WAKE_ID_SIZE);
    return id;
}

/* trace_event(kind, topic_id, seq, source_seq, stamp_ns): a record from Python (the node
 * runtime's callback start and end); nothing when no tracer is attached. */
static PyObject *py_trace_event(PyObject *self, PyObject *args) {
    unsigned int kind;
    unsigned long long topic, seq, source_seq;
    long long stamp;
    if (!PyArg_ParseTuple(args, "IKKKL", &kind, &topic, &seq, &source_seq, &stamp)) return NULL;
    if (trace_base) trace_put(kind, topic, TRACE_NO_ENTRY, seq, source_seq, stamp, 0, NULL);
    Py_RETURN_NONE;
}

/* ===================================================================== reading */

typedef struct ReadCursor ReadCursor;

/* A received message: the fields users read, and the hold it keeps on its slot until released.
 * shmlaunch.transport.Message subclasses this type (its Python methods: age_ns, copy, repr). */
typedef struct {
    PyObject_HEAD
    ReadCursor *cursor; /* the reader's cursor while the slot is held, else NULL */
    int slot;
    PyObject *data;
    unsigned long long seq, generation, source_seq;
    long long stamp_ns, publish_ns;
} MessageObject;

struct ReadCursor {
    PyObject_HEAD
    uint8_t *base;
    int fd, filtered, in_group, closed;
    uint32_t pool, last_wake;
    uint64_t slots_offset, stride, capacity, full_nbytes, last_seq, pid, group_field;
    unsigned long long wake_address; /* where the futex word is (the many-topic wait sleeps on it) */
    Py_ssize_t entry; /* offset of this reader's table entry, -1 for none */
    unsigned long long received, missed, torn, busy, stale, taken;
    unsigned long long traced_lost[3]; /* missed, stale, taken as of this reader's last traced receive */
    uint32_t trace_entry;              /* its reader table index in trace records (0xffff: an observer) */
    long long last_age_ns, last_receive_ns;
    PyObject *views;      /* tuple: each slot's read-only array of a full-size message */
    PyObject *sized_view; /* callable (slot, length) -> array, for messages of other lengths */
    PyTypeObject *message_type;
    uint32_t holds[MAX_POOL]; /* messages this reader holds, per slot */
};

static PyTypeObject MessageType, ReadCursorType, WriteCursorType, LoanType;

static void write_entry(ReadCursor *c) {
    if (c->entry < 0 || c->closed) return;
    uint64_t e[8] = {c->pid, c->received, c->missed, c->last_seq, (uint64_t)c->last_age_ns, (uint64_t)c->last_receive_ns,
                     c->stale, c->group_field};
    _Static_assert(sizeof e == READER_BLOCK_SIZE, "a reader entry is eight u64 fields");
    memcpy(c->base + c->entry, e, sizeof e);
}

/* One hold of `slot` less; the slot's shared lock goes with the last one. */
static int cursor_release(ReadCursor *c, int slot) {
    if (c->closed || slot < 0 || (uint32_t)slot >= c->pool || c->holds[slot] == 0) return 0;
    if (--c->holds[slot] == 0 && ofd_lock(c->fd, LOCK_SLOT0 + slot, F_UNLCK) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    write_entry(c); /* after the release: the reader table is off the latency path */
    return 0;
}

static void trace_release(ReadCursor *c, MessageObject *m) {
    if (trace_base && !c->closed) trace_put(TRACE_RELEASE, topic_id(c->base), c->trace_entry, m->seq, m->source_seq, m->stamp_ns, m->generation, NULL);
}

static void message_release_hold(MessageObject *m) {
    ReadCursor *c = m->cursor;
    if (c == NULL) return;
    m->cursor = NULL;
    trace_release(c, m);
    if (cursor_release(c, m->slot) < 0) PyErr_WriteUnraisable((PyObject *)m);
    Py_DECREF(c);
}

/* The message of `slot` with header `hd`, counted as received (the common path, and the rare
 * one once Python has accepted it). */
static PyObject *deliver(ReadCursor *c, int slot, const SlotHeader *hd, int64_t now) {
    PyObject *data;
    if (hd->length == c->full_nbytes) {
        data = PyTuple_GET_ITEM(c->views, slot);
        Py_INCREF(data);
    } else {
        data = PyObject_CallFunction(c->sized_view, "iK", slot, (unsigned long long)hd->length);
        if (data == NULL) return NULL;
    }
    MessageObject *m = (MessageObject *)c->message_type->tp_alloc(c->message_type, 0);
    if (m == NULL) {
        Py_DECREF(data);
        return NULL;
    }
    uint64_t seq = hd->state >> 1;
    c->holds[slot]++;
    if (c->last_seq && seq > c->last_seq + 1 && !c->in_group) c->missed += seq - c->last_seq - 1; /* a group's gaps are the others' share */
    c->last_seq = seq;
    c->received++;
    c->last_age_ns = now - hd->publish_ns;
    c->last_receive_ns = now;
    Py_INCREF(c);
    m->cursor = c;
    m->slot = slot;
    m->data = data;
    m->seq = seq;
    m->stamp_ns = hd->source_ns;
    m->publish_ns = hd->publish_ns;
    m->generation = hd->generation;
    m->source_seq = hd->source_seq;
    if (trace_base) {
        unsigned long long now_lost[3] = {c->missed, c->stale, c->taken};
        uint32_t lost[3];
        for (int i = 0; i < 3; i++) {
            lost[i] = (uint32_t)(now_lost[i] - c->traced_lost[i]);
            c->traced_lost[i] = now_lost[i];
        }
        trace_put(TRACE_RECEIVE, topic_id(c->base), c->trace_entry, seq, hd->source_seq, hd->source_ns, hd->generation, lost);
    }
    return (PyObject *)m;
}

/* One look at a changed word: a Message (the common case), a tuple for Python to judge (torn,
 * already seen, or a reader that filters by age or group), or NULL with no error set when the
 * newest slot cannot be had (being written, or a slot number past the pool): wait for the next. */
static PyObject *look(ReadCursor *c, uint32_t wake) {
    c->last_wake = wake;
    uint32_t slot = wake & WAKE_SLOT_MASK;
    if (slot >= c->pool) {
        c->busy++;
        return NULL;
    }
    int locked = 0;
    if (c->holds[slot] == 0) {
        int r = ofd_lock(c->fd, LOCK_SLOT0 + slot, F_RDLCK);
        if (r < 0) return PyErr_SetFromErrno(PyExc_OSError);
        if (r == 0) {
            c->busy++; /* the writer is rewriting it: a newer word follows */
            return NULL;
        }
        locked = 1;
    }
    SlotHeader hd;
    read_header(c->base + c->slots_offset + slot * c->stride, &hd);
    int64_t now = realtime_ns();
    if (hd.length > c->capacity && !(hd.state & 1)) { /* a length past the slot is never delivered */
        c->torn++;
        if (locked && ofd_lock(c->fd, LOCK_SLOT0 + slot, F_UNLCK) < 0) return PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    if ((hd.state & 1) || (hd.state >> 1) <= c->last_seq || c->filtered)
        return Py_BuildValue("(iiKKLLKKL)", (int)slot, locked, (unsigned long long)hd.state, (unsigned long long)hd.length,
                             (long long)hd.source_ns, (long long)hd.publish_ns, (unsigned long long)hd.generation,
                             (unsigned long long)hd.source_seq, (long long)now);
    return deliver(c, (int)slot, &hd, now);
}

/* receive(timeout) -> Message | tuple (for Python's rare-case checks) | None (timed out).
 * timeout: None waits forever, 0 looks once. Sleeping, waking and taking are this one call. */
static PyObject *rc_receive(ReadCursor *c, PyObject *timeout) {
    double deadline = 0;
    int forever = timeout == Py_None;
    if (!forever) {
        double t = PyFloat_AsDouble(timeout);
        if (t == -1.0 && PyErr_Occurred()) return NULL;
        deadline = monotonic_s() + t;
    }
    uint32_t *word = (uint32_t *)(c->base + HEADER_WAKE_OFFSET);
    for (;;) {
        if (c->closed) Py_RETURN_NONE; /* closed by another thread while this one slept */
        uint32_t wake = __atomic_load_n(word, __ATOMIC_ACQUIRE);
        if (wake != c->last_wake) {
            PyObject *got = look(c, wake);
            if (got != NULL || PyErr_Occurred()) return got;
        }
        struct timespec ts, *tsp = NULL;
        if (!forever) {
            double left = deadline - monotonic_s();
            if (left <= 0) Py_RETURN_NONE;
            ts.tv_sec = (time_t)left;
            ts.tv_nsec = (long)((left - (double)ts.tv_sec) * 1e9);
            tsp = &ts;
        }
        uint32_t expected = c->last_wake;
        long r;
        int err;
        Py_BEGIN_ALLOW_THREADS
        r = syscall(SYS_futex, word, FUTEX_WAIT, expected, tsp, NULL, 0);
        err = errno;
        Py_END_ALLOW_THREADS
        if (r < 0 && err == EINTR && PyErr_CheckSignals() < 0) return NULL; /* Ctrl-C and other handlers run */
    }
}

/* deliver(slot, state, length, source_ns, publish_ns, generation, source_seq, now) -> Message:
 * what receive's tuple described, once Python's checks accepted it. */
static PyObject *rc_deliver(ReadCursor *c, PyObject *args) {
    int slot;
    SlotHeader hd;
    long long now;
    if (!PyArg_ParseTuple(args, "iKKLLKKL", &slot, &hd.state, &hd.length, &hd.source_ns, &hd.publish_ns, &hd.generation,
                          &hd.source_seq, &now))
        return NULL;
    if (slot < 0 || (uint32_t)slot >= c->pool) return PyErr_Format(PyExc_ValueError, "no slot %d", slot);
    if (c->closed) Py_RETURN_NONE;
    return deliver(c, slot, &hd, now);
}

static PyObject *rc_write_entry(ReadCursor *c, PyObject *unused) {
    write_entry(c);
    Py_RETURN_NONE;
}

static PyObject *rc_held(ReadCursor *c, PyObject *unused) {
    unsigned long long n = 0;
    for (uint32_t i = 0; i < c->pool; i++) n += c->holds[i];
    return PyLong_FromUnsignedLongLong(n);
}

/* After close nothing touches the mapping or the file: the caller closes both next (every
 * lock goes with the file), and the views are dropped here so that the mapping can go. */
static PyObject *rc_close(ReadCursor *c, PyObject *unused) {
    c->closed = 1;
    memset(c->holds, 0, sizeof c->holds);
    Py_CLEAR(c->views);
    Py_CLEAR(c->sized_view);
    Py_RETURN_NONE;
}

/* Cursors take keyword arguments only: the names are the contract with _reader.py and _writer.py
 * (and with _windows_hotpath.py's cursors, which take the same keywords; tests/test_layout_codegen.py
 * compares the three), so an argument added, dropped or reordered is a TypeError, never a silent shift. */
static int keywords_only(const char *type, PyObject *args) {
    if (PyTuple_GET_SIZE(args) == 0) return 0;
    PyErr_Format(PyExc_TypeError, "%s() takes keyword arguments only", type);
    return -1;
}

static char *read_cursor_keywords[] = {"address", "fd", "slots_offset", "stride", "pool", "capacity", "full_nbytes", "views",
                                       "sized_view", "message_type", "entry", "group_field", "filtered", NULL};

static int rc_init(ReadCursor *c, PyObject *args, PyObject *kw) {
    unsigned long long base, slots_offset, stride, capacity, full, group_field;
    unsigned int pool;
    Py_ssize_t entry;
    int fd, filtered;
    PyObject *views, *sized_view, *mtype;
    if (keywords_only("ReadCursor", args) < 0 ||
        !PyArg_ParseTupleAndKeywords(args, kw, "KiKKIKKO!OO!nKp", read_cursor_keywords, &base, &fd, &slots_offset, &stride, &pool,
                                     &capacity, &full, &PyTuple_Type, &views, &sized_view, &PyType_Type, &mtype, &entry, &group_field,
                                     &filtered))
        return -1;
    if (pool < 1 || pool > MAX_POOL || PyTuple_GET_SIZE(views) != (Py_ssize_t)pool) {
        PyErr_SetString(PyExc_ValueError, "pool and views disagree");
        return -1;
    }
    if (!PyType_IsSubtype((PyTypeObject *)mtype, &MessageType)) {
        PyErr_SetString(PyExc_TypeError, "message_type must subclass _fastpath.Message");
        return -1;
    }
    c->base = (uint8_t *)(uintptr_t)base;
    c->wake_address = base + HEADER_WAKE_OFFSET;
    c->fd = fd;
    c->slots_offset = slots_offset;
    c->stride = stride;
    c->pool = pool;
    c->capacity = capacity;
    c->full_nbytes = full;
    c->entry = entry;
    c->trace_entry = entry >= READERS_OFFSET ? (uint32_t)((entry - READERS_OFFSET) / READER_ENTRY_SIZE) : TRACE_NO_ENTRY;
    c->group_field = group_field;
    c->in_group = group_field != 0;
    c->filtered = filtered;
    c->pid = (uint64_t)getpid();
    Py_INCREF(views);
    Py_XSETREF(c->views, views);
    Py_INCREF(sized_view);
    Py_XSETREF(c->sized_view, sized_view);
    Py_INCREF(mtype);
    Py_XSETREF(c->message_type, (PyTypeObject *)mtype);
    return 0;
}

static void rc_dealloc(ReadCursor *c) {
    Py_XDECREF(c->views);
    Py_XDECREF(c->sized_view);
    Py_XDECREF(c->message_type);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyMethodDef rc_methods[] = {
    {"receive", (PyCFunction)rc_receive, METH_O, "receive(timeout) -> Message, tuple (rare cases) or None"},
    {"deliver", (PyCFunction)rc_deliver, METH_VARARGS, "deliver(slot, state, length, source_ns, publish_ns, generation, source_seq, now)"},
    {"write_entry", (PyCFunction)rc_write_entry, METH_NOARGS, "write this reader's counters into its table entry"},
    {"held", (PyCFunction)rc_held, METH_NOARGS, "messages held now"},
    {"close", (PyCFunction)rc_close, METH_NOARGS, "forget every hold (the caller closes the file)"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef rc_members[] = {
    {"last_wake", T_UINT, offsetof(ReadCursor, last_wake), READONLY, NULL},
    {"last_seq", T_ULONGLONG, offsetof(ReadCursor, last_seq), 0, NULL},
    {"received", T_ULONGLONG, offsetof(ReadCursor, received), READONLY, NULL},
    {"missed", T_ULONGLONG, offsetof(ReadCursor, missed), READONLY, NULL},
    {"torn", T_ULONGLONG, offsetof(ReadCursor, torn), 0, NULL},
    {"busy", T_ULONGLONG, offsetof(ReadCursor, busy), READONLY, NULL},
    {"stale", T_ULONGLONG, offsetof(ReadCursor, stale), 0, NULL},
    {"taken", T_ULONGLONG, offsetof(ReadCursor, taken), 0, NULL},
    {"closed", T_INT, offsetof(ReadCursor, closed), READONLY, NULL},
    {"wake_address", T_ULONGLONG, offsetof(ReadCursor, wake_address), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject ReadCursorType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmlaunch._platform._fastpath.ReadCursor",
    .tp_basicsize = sizeof(ReadCursor),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A reader's hot-path state: last word seen, holds per slot, counters.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)rc_init,
    .tp_dealloc = (destructor)rc_dealloc,
    .tp_methods = rc_methods,
    .tp_members = rc_members,
};

/* Message(reader, slot, data, seq, stamp_ns, publish_ns, generation=0, source_seq=0): reader is a
 * ReadCursor holding the slot, or None for a detached message (copy()). */
static PyObject *message_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    PyObject *cursor, *data;
    int slot;
    unsigned long long seq, generation = 0, source_seq = 0;
    long long stamp_ns, publish_ns;
    if (!PyArg_ParseTuple(args, "OiOKLL|KK", &cursor, &slot, &data, &seq, &stamp_ns, &publish_ns, &generation, &source_seq)) return NULL;
    if (cursor != Py_None && !PyObject_TypeCheck(cursor, &ReadCursorType))
        return PyErr_Format(PyExc_TypeError, "a Message's reader is a ReadCursor or None");
    MessageObject *m = (MessageObject *)type->tp_alloc(type, 0);
    if (m == NULL) return NULL;
    if (cursor != Py_None) {
        Py_INCREF(cursor);
        m->cursor = (ReadCursor *)cursor;
    }
    Py_INCREF(data);
    m->data = data;
    m->slot = slot;
    m->seq = seq;
    m->stamp_ns = stamp_ns;
    m->publish_ns = publish_ns;
    m->generation = generation;
    m->source_seq = source_seq;
    return (PyObject *)m;
}

static void message_dealloc(MessageObject *m) {
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb); /* an exception being raised must survive this */
    message_release_hold(m);
    PyErr_Restore(et, ev, tb);
    Py_CLEAR(m->data);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

static PyObject *message_release(MessageObject *m, PyObject *unused) {
    ReadCursor *c = m->cursor;
    if (c != NULL) {
        m->cursor = NULL;
        trace_release(c, m);
        int r = cursor_release(c, m->slot);
        Py_DECREF(c);
        if (r < 0) return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *message_enter(PyObject *m, PyObject *unused) {
    Py_INCREF(m);
    return m;
}

static PyObject *message_exit(MessageObject *m, PyObject *args) {
    PyObject *r = message_release(m, NULL);
    if (r == NULL) return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

static PyObject *message_held(MessageObject *m, void *unused) { return PyBool_FromLong(m->cursor != NULL); }

static PyMethodDef message_methods[] = {
    {"release", (PyCFunction)message_release, METH_NOARGS, "Let the writer reuse this message's slot (idempotent)."},
    {"__enter__", (PyCFunction)message_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)message_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef message_members[] = {
    {"data", T_OBJECT, offsetof(MessageObject, data), READONLY, "the payload: a read-only view of the slot while held"},
    {"seq", T_ULONGLONG, offsetof(MessageObject, seq), READONLY, "sequence number (1, 2, ... per writer generation's topic)"},
    {"stamp_ns", T_LONGLONG, offsetof(MessageObject, stamp_ns), READONLY, "source timestamp (CLOCK_REALTIME ns)"},
    {"publish_ns", T_LONGLONG, offsetof(MessageObject, publish_ns), READONLY, "when it was published (CLOCK_REALTIME ns)"},
    {"generation", T_ULONGLONG, offsetof(MessageObject, generation), READONLY, "which writer (1 = the first to attach) published it"},
    {"source_seq", T_ULONGLONG, offsetof(MessageObject, source_seq), READONLY, "the input message it was computed from (0: none)"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef message_getset[] = {
    {"held", (getter)message_held, NULL, "True until released", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject MessageType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmlaunch._platform._fastpath.Message",
    .tp_basicsize = sizeof(MessageObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "A received message and its hold on a slot.",
    .tp_new = message_new,
    .tp_dealloc = (destructor)message_dealloc,
    .tp_methods = message_methods,
    .tp_members = message_members,
    .tp_getset = message_getset,
};

/* ===================================================================== writing */

typedef struct {
    PyObject_HEAD
    uint8_t *base;
    int fd, closed, next_slot;
    int copying; /* a publish is copying with the GIL released: one writer is one thread's at a time */
    uint32_t pool;
    uint64_t slots_offset, stride, capacity, exact_nbytes, full_nbytes;
    unsigned long long seq, generation, published, dropped;
    unsigned long long default_source_seq; /* what publish and loan use when not given one (the node runtime sets it) */
    PyObject *views;       /* tuple: each slot's writable full-size array (loans) */
    PyObject *sized_view;  /* callable (slot, nbytes) -> writable array; slot -1 is the scratch buffer */
    PyObject *contiguous;  /* numpy.ascontiguousarray, for a publish of a non-contiguous array */
    PyObject *topic;       /* for error messages */
    PyObject *closed_error;
    PyTypeObject *loan_type;
    uint32_t order[MAX_POOL]; /* slots oldest first: the next to write is the first free one */
} WriteCursor;

typedef struct {
    PyObject_HEAD
    WriteCursor *writer;
    int slot, done;
    uint64_t nbytes;
    PyObject *data, *stamp_ns, *seq;
    unsigned long long source_seq;
} LoanObject;

static int closed_check(WriteCursor *w) {
    if (!w->closed) return 0;
    PyErr_Format(w->closed_error, "writer of topic %R is closed", w->topic);
    return -1;
}

/* Lock the oldest of the first `candidates` slots that no reader holds; -1 when all are held. */
static int lock_oldest_free(WriteCursor *w, uint32_t candidates) {
    for (uint32_t i = 0; i < candidates; i++) {
        int r = ofd_lock(w->fd, LOCK_SLOT0 + w->order[i], F_WRLCK);
        if (r < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -2;
        }
        if (r == 1) return (int)w->order[i];
    }
    return -1;
}

/* The slot to write next, locked and marked odd (being written): the one locked ahead, or
 * the oldest free. -1: every slot is held by readers (counted as dropped); -2: error set. */
static int begin_write(WriteCursor *w) {
    if (w->copying) {
        PyErr_Format(PyExc_RuntimeError, "writer of topic %R is publishing in another thread: a writer is used by one thread at a time",
                     w->topic);
        return -2;
    }
    int slot = w->next_slot;
    if (slot >= 0)
        w->next_slot = -1;
    else
        slot = lock_oldest_free(w, w->pool);
    if (slot == -1) {
        w->dropped++;
        if (trace_base) trace_put(TRACE_DROP, topic_id(w->base), TRACE_NO_ENTRY, w->seq + 1, 0, 0, w->generation, NULL);
    }
    if (slot >= 0) __atomic_store_n((uint64_t *)(w->base + w->slots_offset + slot * w->stride + SLOT_STATE_OFFSET), 2 * w->seq + 1, __ATOMIC_RELEASE);
    return slot;
}

static void move_order(WriteCursor *w, int slot, int to_end) {
    uint32_t i = 0;
    while (i < w->pool && w->order[i] != (uint32_t)slot) i++;
    if (i == w->pool) return;
    if (to_end) {
        memmove(&w->order[i], &w->order[i + 1], (w->pool - 1 - i) * sizeof(uint32_t));
        w->order[w->pool - 1] = (uint32_t)slot;
    } else {
        memmove(&w->order[1], &w->order[0], i * sizeof(uint32_t));
        w->order[0] = (uint32_t)slot;
    }
}

/* The publish itself: header, state even, unlock, newest sequence, wake word, wake; then the
 * next slot is locked ahead (never the newest, which readers want; never with a pool of one). */
static PyObject *commit_slot(WriteCursor *w, int slot, uint64_t length, PyObject *stamp, unsigned long long source_seq) {
    int64_t src = -1;
    if (stamp != NULL && stamp != Py_None) {
        src = PyLong_AsLongLong(stamp);
        if (src == -1 && PyErr_Occurred()) return NULL;
    }
    uint64_t seq = ++w->seq;
    uint8_t *h = w->base + w->slots_offset + slot * w->stride;
    int64_t now = realtime_ns();
    if (src < 0) src = now;
    memcpy(h + SLOT_LENGTH_OFFSET, &length, SLOT_LENGTH_SIZE);
    memcpy(h + SLOT_SOURCE_NS_OFFSET, &src, SLOT_SOURCE_NS_SIZE);
    memcpy(h + SLOT_PUBLISH_NS_OFFSET, &now, SLOT_PUBLISH_NS_SIZE);
    memcpy(h + SLOT_GENERATION_OFFSET, &w->generation, SLOT_GENERATION_SIZE);
    memcpy(h + SLOT_SOURCE_SEQ_OFFSET, &source_seq, SLOT_SOURCE_SEQ_SIZE);
    if (trace_base) trace_put(TRACE_PUBLISH, topic_id(w->base), TRACE_NO_ENTRY, seq, source_seq, src, w->generation, NULL); /* before any reader can see it */
    __atomic_store_n((uint64_t *)(h + SLOT_STATE_OFFSET), 2 * seq, __ATOMIC_RELEASE);
    if (ofd_lock(w->fd, LOCK_SLOT0 + slot, F_UNLCK) < 0) return PyErr_SetFromErrno(PyExc_OSError);
    __atomic_store_n((uint64_t *)(w->base + HEADER_LATEST_SEQ_OFFSET), seq, __ATOMIC_RELEASE);
    uint32_t *wake = (uint32_t *)(w->base + HEADER_WAKE_OFFSET);
    __atomic_store_n(wake, (uint32_t)(((seq & WAKE_SEQ_MASK) << WAKE_SEQ_SHIFT) | (uint32_t)slot), __ATOMIC_RELEASE);
    syscall(SYS_futex, wake, FUTEX_WAKE, 0x7fffffff, NULL, NULL, 0);
    w->published++;
    move_order(w, slot, 1);
    if (w->pool > 1 && !w->copying) { /* (not while another thread's publish copies into a slot it holds) */
        int next = lock_oldest_free(w, w->pool - 1);
        if (next == -2) return NULL;
        w->next_slot = next;
    }
    return PyLong_FromUnsignedLongLong(seq);
}

/* Python objects (a numpy object array: format "O") are pointers: their bytes mean nothing in another process. */
static int refuse_objects(WriteCursor *w, Py_buffer *b) {
    const char *f = b->format;
    if (f == NULL || !(f[0] == 'O' || (f[0] != '\0' && f[1] == 'O')) || strlen(f) > 2) return 0;
    PyBuffer_Release(b);
    PyErr_Format(PyExc_ValueError, "cannot publish to topic %R: an array of Python objects (its bytes are pointers)", w->topic);
    return -1;
}

static int get_payload(WriteCursor *w, PyObject *data, Py_buffer *b) {
    if (PyObject_GetBuffer(data, b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) == 0) return refuse_objects(w, b);
    if (!PyErr_ExceptionMatches(PyExc_BufferError) && !PyErr_ExceptionMatches(PyExc_ValueError)) return -1;
    PyErr_Clear(); /* a strided array: copy it to a contiguous one first */
    PyObject *flat = PyObject_CallOneArg(w->contiguous, data);
    if (flat == NULL) return -1;
    int r = PyObject_GetBuffer(flat, b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT);
    Py_DECREF(flat);
    return r == 0 ? refuse_objects(w, b) : r;
}

/* Positional-or-keyword arguments of a METH_FASTCALL|METH_KEYWORDS method: out[i] is the
 * argument named names[i] (borrowed), or NULL when not given. -1 with TypeError on a mistake. */
static int fast_args(const char *fn, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, const char *const *names, int n,
                     int required, PyObject **out) {
    for (int i = 0; i < n; i++) out[i] = i < nargs ? args[i] : NULL;
    if (nargs > n) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %d arguments (%zd given)", fn, n, nargs);
        return -1;
    }
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        const char *key = PyUnicode_AsUTF8(PyTuple_GET_ITEM(kwnames, k));
        if (key == NULL) return -1;
        int i = 0;
        while (i < n && strcmp(key, names[i]) != 0) i++;
        if (i == n || out[i] != NULL) {
            PyErr_Format(PyExc_TypeError, i == n ? "%s() got an unexpected keyword argument '%s'" : "%s() got multiple values for argument '%s'",
                         fn, key);
            return -1;
        }
        out[i] = args[nargs + k];
    }
    for (int i = 0; i < required; i++)
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fn, names[i]);
            return -1;
        }
    return 0;
}

static int source_seq_arg(WriteCursor *w, PyObject *o, unsigned long long *out) {
    *out = w->default_source_seq;
    if (o == NULL) return 0;
    *out = PyLong_AsUnsignedLongLong(o);
    return (*out == (unsigned long long)-1 && PyErr_Occurred()) ? -1 : 0;
}

/* publish(data, stamp_ns=None, source_seq=0) -> seq, or None when every slot is held (dropped). */
static PyObject *wc_publish(WriteCursor *w, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    static const char *const names[] = {"data", "stamp_ns", "source_seq"};
    PyObject *a[3];
    unsigned long long source_seq;
    if (fast_args("publish", args, nargs, kwnames, names, 3, 1, a) < 0 || source_seq_arg(w, a[2], &source_seq) < 0) return NULL;
    if (closed_check(w) < 0) return NULL;
    Py_buffer b;
    if (get_payload(w, a[0], &b) < 0) return NULL;
    uint64_t n = (uint64_t)b.len;
    if (n > w->capacity || (w->exact_nbytes && n != w->exact_nbytes)) {
        PyBuffer_Release(&b);
        if (n > w->capacity)
            return PyErr_Format(PyExc_ValueError, "cannot publish %llu bytes to topic %R: capacity is %llu bytes",
                                (unsigned long long)n, w->topic, (unsigned long long)w->capacity);
        return PyErr_Format(PyExc_ValueError, "cannot publish %llu bytes to topic %R: its dtype and shape need exactly %llu",
                            (unsigned long long)n, w->topic, (unsigned long long)w->exact_nbytes);
    }
    int slot = begin_write(w);
    if (slot < 0) {
        PyBuffer_Release(&b);
        if (slot == -2) return NULL;
        Py_RETURN_NONE;
    }
    uint8_t *dst = w->base + w->slots_offset + slot * w->stride + SLOT_HEADER_SIZE;
    if (n >= BIG_COPY) { /* a frame: let other threads run during the copy */
        w->copying = 1;
        Py_BEGIN_ALLOW_THREADS
        memcpy(dst, b.buf, n);
        Py_END_ALLOW_THREADS
        w->copying = 0;
    } else {
        memcpy(dst, b.buf, n);
    }
    PyBuffer_Release(&b);
    if (closed_check(w) < 0) return NULL; /* closed by another thread during the copy */
    return commit_slot(w, slot, n, a[1], source_seq);
}

/* loan(nbytes=None, stamp_ns=None, source_seq=0) -> Loan: a slot to fill in place (a scratch
 * buffer when every slot is held: the loan is then dropped, as a publish would be). */
static PyObject *wc_loan(WriteCursor *w, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    static const char *const names[] = {"nbytes", "stamp_ns", "source_seq"};
    PyObject *a[3];
    unsigned long long nbytes = w->full_nbytes, source_seq;
    if (fast_args("loan", args, nargs, kwnames, names, 3, 0, a) < 0 || source_seq_arg(w, a[2], &source_seq) < 0) return NULL;
    PyObject *stamp = a[1] ? a[1] : Py_None;
    if (a[0] != NULL && a[0] != Py_None) {
        long long want = PyLong_AsLongLong(a[0]);
        if (want == -1 && PyErr_Occurred()) return NULL;
        if (want < 0 || (unsigned long long)want > w->capacity)
            return PyErr_Format(PyExc_ValueError, "cannot loan %lld bytes of topic %R: capacity is %llu bytes", want, w->topic,
                                (unsigned long long)w->capacity);
        nbytes = (unsigned long long)want;
    }
    if (closed_check(w) < 0) return NULL;
    int slot = begin_write(w);
    if (slot == -2) return NULL;
    PyObject *data;
    if (slot >= 0 && nbytes == w->full_nbytes) {
        data = PyTuple_GET_ITEM(w->views, slot);
        Py_INCREF(data);
    } else {
        data = PyObject_CallFunction(w->sized_view, "iK", slot, nbytes);
    }
    if (data == NULL) {
        if (slot >= 0) {
            ofd_lock(w->fd, LOCK_SLOT0 + slot, F_UNLCK);
            move_order(w, slot, 0);
        }
        return NULL;
    }
    LoanObject *l = (LoanObject *)w->loan_type->tp_alloc(w->loan_type, 0);
    if (l == NULL) {
        Py_DECREF(data);
        return NULL;
    }
    Py_INCREF(w);
    l->writer = w;
    l->slot = slot;
    l->nbytes = nbytes;
    l->data = data;
    Py_INCREF(stamp);
    l->stamp_ns = stamp;
    Py_INCREF(Py_None);
    l->seq = Py_None;
    l->source_seq = source_seq;
    return (PyObject *)l;
}

/* Like ReadCursor.close: nothing touches the mapping or the file afterwards. */
static PyObject *wc_close(WriteCursor *w, PyObject *unused) {
    w->closed = 1;
    Py_CLEAR(w->views);
    Py_CLEAR(w->sized_view);
    Py_RETURN_NONE;
}

static char *write_cursor_keywords[] = {"address", "fd", "slots_offset", "stride", "capacity", "exact_nbytes", "full_nbytes", "seq",
                                        "generation", "order", "views", "sized_view", "contiguous", "topic", "closed_error",
                                        "loan_type", NULL};

static int wc_init(WriteCursor *w, PyObject *args, PyObject *kw) {
    unsigned long long base, slots_offset, stride, capacity, exact, full, seq, generation;
    int fd;
    PyObject *order, *views, *sized_view, *contiguous, *topic, *closed_error, *ltype;
    if (keywords_only("WriteCursor", args) < 0 ||
        !PyArg_ParseTupleAndKeywords(args, kw, "KiKKKKKKKO!O!OOOOO!", write_cursor_keywords, &base, &fd, &slots_offset, &stride,
                                     &capacity, &exact, &full, &seq, &generation, &PyTuple_Type, &order, &PyTuple_Type, &views,
                                     &sized_view, &contiguous, &topic, &closed_error, &PyType_Type, &ltype))
        return -1;
    Py_ssize_t pool = PyTuple_GET_SIZE(order);
    if (pool < 1 || pool > MAX_POOL || PyTuple_GET_SIZE(views) != pool) {
        PyErr_SetString(PyExc_ValueError, "order and views must list every slot");
        return -1;
    }
    if (!PyType_IsSubtype((PyTypeObject *)ltype, &LoanType)) {
        PyErr_SetString(PyExc_TypeError, "loan_type must subclass _fastpath.Loan");
        return -1;
    }
    for (Py_ssize_t i = 0; i < pool; i++) {
        long v = PyLong_AsLong(PyTuple_GET_ITEM(order, i));
        if (v < 0 || v >= pool) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "order names a slot past the pool");
            return -1;
        }
        w->order[i] = (uint32_t)v;
    }
    w->base = (uint8_t *)(uintptr_t)base;
    w->fd = fd;
    w->pool = (uint32_t)pool;
    w->slots_offset = slots_offset;
    w->stride = stride;
    w->capacity = capacity;
    w->exact_nbytes = exact;
    w->full_nbytes = full;
    w->seq = seq;
    w->generation = generation;
    w->next_slot = -1;
    PyObject *keep[6] = {views, sized_view, contiguous, topic, closed_error, ltype};
    PyObject **slots[6] = {&w->views, &w->sized_view, &w->contiguous, &w->topic, &w->closed_error, (PyObject **)&w->loan_type};
    for (int i = 0; i < 6; i++) {
        Py_INCREF(keep[i]);
        Py_XSETREF(*slots[i], keep[i]);
    }
    return 0;
}

static void wc_dealloc(WriteCursor *w) {
    Py_XDECREF(w->views);
    Py_XDECREF(w->sized_view);
    Py_XDECREF(w->contiguous);
    Py_XDECREF(w->topic);
    Py_XDECREF(w->closed_error);
    Py_XDECREF(w->loan_type);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

/* skip_to(seq): the next message is numbered seq, if that is ahead (numbers never go back). */
static PyObject *wc_skip_to(WriteCursor *w, PyObject *arg) {
    unsigned long long seq = PyLong_AsUnsignedLongLong(arg);
    if (seq == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    if (seq >= (1ULL << 62)) {
        PyErr_SetString(PyExc_ValueError, "sequence number out of range");
        return NULL;
    }
    if (seq > w->seq + 1) w->seq = seq - 1;
    Py_RETURN_NONE;
}

static PyMethodDef wc_methods[] = {
    {"skip_to", (PyCFunction)wc_skip_to, METH_O, "skip_to(seq): number the next message seq, if that is ahead"},
    {"publish", (PyCFunction)(void (*)(void))wc_publish, METH_FASTCALL | METH_KEYWORDS, "publish(data, stamp_ns=None, source_seq=0) -> seq or None"},
    {"loan", (PyCFunction)(void (*)(void))wc_loan, METH_FASTCALL | METH_KEYWORDS, "loan(nbytes=None, stamp_ns=None, source_seq=0) -> Loan"},
    {"close", (PyCFunction)wc_close, METH_NOARGS, "refuse every later call (the caller closes the file)"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef wc_members[] = {
    {"seq", T_ULONGLONG, offsetof(WriteCursor, seq), READONLY, NULL},
    {"generation", T_ULONGLONG, offsetof(WriteCursor, generation), READONLY, NULL},
    {"default_source_seq", T_ULONGLONG, offsetof(WriteCursor, default_source_seq), 0, NULL},
    {"published", T_ULONGLONG, offsetof(WriteCursor, published), READONLY, NULL},
    {"dropped", T_ULONGLONG, offsetof(WriteCursor, dropped), READONLY, NULL},
    {"closed", T_INT, offsetof(WriteCursor, closed), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject WriteCursorType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmlaunch._platform._fastpath.WriteCursor",
    .tp_basicsize = sizeof(WriteCursor),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A writer's hot-path state: sequence, slot order, the slot locked ahead, counters.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)wc_init,
    .tp_dealloc = (destructor)wc_dealloc,
    .tp_methods = wc_methods,
    .tp_members = wc_members,
};

static PyObject *loan_publish(LoanObject *l, PyObject *unused) {
    if (!l->done) {
        l->done = 1;
        if (l->slot >= 0) {
            if (closed_check(l->writer) < 0) return NULL;
            PyObject *seq = commit_slot(l->writer, l->slot, l->nbytes, l->stamp_ns, l->source_seq);
            if (seq == NULL) return NULL;
            Py_SETREF(l->seq, seq);
        }
    }
    Py_INCREF(l->seq);
    return l->seq;
}

static PyObject *loan_cancel(LoanObject *l, PyObject *unused) {
    if (!l->done) {
        l->done = 1;
        WriteCursor *w = l->writer;
        if (l->slot >= 0 && !w->closed) { /* the slot stays odd (never delivered) and is reused first */
            if (ofd_lock(w->fd, LOCK_SLOT0 + l->slot, F_UNLCK) < 0) return PyErr_SetFromErrno(PyExc_OSError);
            move_order(w, l->slot, 0);
        }
    }
    Py_RETURN_NONE;
}

static PyObject *loan_enter(LoanObject *l, PyObject *unused) {
    Py_INCREF(l->data);
    return l->data;
}

static PyObject *loan_exit(LoanObject *l, PyObject *args) {
    PyObject *exc_type = PyTuple_GET_SIZE(args) > 0 ? PyTuple_GET_ITEM(args, 0) : Py_None;
    PyObject *r = exc_type == Py_None ? loan_publish(l, NULL) : loan_cancel(l, NULL);
    if (r == NULL) return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

static PyObject *loan_dropped(LoanObject *l, void *unused) { return PyBool_FromLong(l->slot < 0); }

/* A loan dropped without publish() or cancel() gives its slot back, as cancel() would. */
static void loan_dealloc(LoanObject *l) {
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb); /* an exception being raised must survive this */
    PyObject *r = loan_cancel(l, NULL);
    if (r == NULL)
        PyErr_WriteUnraisable((PyObject *)l);
    else
        Py_DECREF(r);
    PyErr_Restore(et, ev, tb);
    Py_XDECREF(l->writer);
    Py_XDECREF(l->data);
    Py_XDECREF(l->stamp_ns);
    Py_XDECREF(l->seq);
    Py_TYPE(l)->tp_free((PyObject *)l);
}

static PyMethodDef loan_methods[] = {
    {"publish", (PyCFunction)loan_publish, METH_NOARGS, "Publish the loaned slot now (what a clean exit of the with block does); None if dropped."},
    {"cancel", (PyCFunction)loan_cancel, METH_NOARGS, "Give the slot back unpublished (what an exception in the block does)."},
    {"__enter__", (PyCFunction)loan_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)loan_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef loan_members[] = {
    {"data", T_OBJECT, offsetof(LoanObject, data), READONLY, "the writable view to fill"},
    {"stamp_ns", T_OBJECT, offsetof(LoanObject, stamp_ns), 0, "source timestamp (None: the publish time)"},
    {"source_seq", T_ULONGLONG, offsetof(LoanObject, source_seq), 0, "the input message this output comes from"},
    {"seq", T_OBJECT, offsetof(LoanObject, seq), READONLY, "the published sequence number (None before, and if dropped)"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef loan_getset[] = {
    {"dropped", (getter)loan_dropped, NULL, "True when no slot was free: nothing this loan holds will be published", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LoanType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmlaunch._platform._fastpath.Loan",
    .tp_basicsize = sizeof(LoanObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "A slot being filled in place.",
    .tp_dealloc = (destructor)loan_dealloc,
    .tp_methods = loan_methods,
    .tp_members = loan_members,
    .tp_getset = loan_getset,
};

static int to_timespec(PyObject *timeout, struct timespec *ts, int absolute) {
    if (timeout == Py_None) return 0;
    double t = PyFloat_AsDouble(timeout);
    if (t == -1.0 && PyErr_Occurred()) return -1;
    if (t < 0) t = 0;
    if (absolute) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        t += (double)now.tv_sec + now.tv_nsec / 1e9;
    }
    ts->tv_sec = (time_t)t;
    ts->tv_nsec = (long)((t - (double)ts->tv_sec) * 1e9);
    return 1;
}

static PyObject *py_futex_wait(PyObject *self, PyObject *args) {
    unsigned long long addr;
    unsigned int expected;
    PyObject *timeout;
    if (!PyArg_ParseTuple(args, "KIO", &addr, &expected, &timeout)) return NULL;
    struct timespec ts;
    int has = to_timespec(timeout, &ts, 0);
    if (has < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    syscall(SYS_futex, (uint32_t *)(uintptr_t)addr, FUTEX_WAIT, expected, has ? &ts : NULL, NULL, 0);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_futex_wake(PyObject *self, PyObject *args) {
    unsigned long long addr;
    if (!PyArg_ParseTuple(args, "K", &addr)) return NULL;
    syscall(SYS_futex, (uint32_t *)(uintptr_t)addr, FUTEX_WAKE, 0x7fffffff, NULL, NULL, 0);
    Py_RETURN_NONE;
}

/* futex_wait_any([(addr, expected), ...], timeout) -> True, or False when the kernel lacks futex_waitv */
static PyObject *py_futex_wait_any(PyObject *self, PyObject *args) {
    PyObject *words, *timeout;
    if (!PyArg_ParseTuple(args, "OO", &words, &timeout)) return NULL;
    PyObject *seq = PySequence_Fast(words, "words must be a sequence");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 1 || n > MAX_WAITV) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "futex_wait_any takes 1 to 128 words");
        return NULL;
    }
    struct futex_waitv_entry w[MAX_WAITV];
    memset(w, 0, sizeof w);
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long addr;
        unsigned int val;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "KI", &addr, &val)) {
            Py_DECREF(seq);
            return NULL;
        }
        w[i].uaddr = addr;
        w[i].val = val;
        w[i].flags = 2; /* FUTEX2_SIZE_U32, shared */
    }
    Py_DECREF(seq);
    struct timespec ts;
    int has = to_timespec(timeout, &ts, 1);
    if (has < 0) return NULL;
    long r;
    int err;
    Py_BEGIN_ALLOW_THREADS
    r = syscall(SYS_futex_waitv, w, (unsigned int)n, 0, has ? &ts : NULL, CLOCK_MONOTONIC);
    err = errno;
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(!(r < 0 && err == ENOSYS));
}

static PyMethodDef methods[] = {
    {"lock", py_lock, METH_VARARGS, "lock(fd, byte, kind) -> bool: kind 0 shared, 1 exclusive, 2 unlock; never blocks"},
    {"futex_wait", py_futex_wait, METH_VARARGS, "futex_wait(addr, expected, timeout): sleep while the word equals expected"},
    {"futex_wake", py_futex_wake, METH_VARARGS, "futex_wake(addr): wake every sleeper on the word"},
    {"futex_wait_any", py_futex_wait_any, METH_VARARGS, "futex_wait_any(words, timeout) -> False if futex_waitv is missing"},
    {"trace_start", py_trace_start, METH_VARARGS, "trace_start(address, capacity): record every step into the ring at address"},
    {"trace_stop", py_trace_stop, METH_NOARGS, "trace_stop(): record nothing more"},
    {"trace_event", py_trace_event, METH_VARARGS, "trace_event(kind, topic_id, seq, source_seq, stamp_ns): one record, if tracing"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastpath", "Pool-topic hot path system calls (Linux).", -1, methods};

PyMODINIT_FUNC PyInit__fastpath(void) {
    PyTypeObject *types[] = {&MessageType, &ReadCursorType, &WriteCursorType, &LoanType};
    const char *names[] = {"Message", "ReadCursor", "WriteCursor", "Loan"};
    for (int i = 0; i < 4; i++)
        if (PyType_Ready(types[i]) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    for (int i = 0; i < 4; i++) {
        Py_INCREF(types[i]);
        if (PyModule_AddObject(m, names[i], (PyObject *)types[i]) < 0) {
            Py_DECREF(types[i]);
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
