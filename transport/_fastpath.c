/* The system calls of the pool-topic hot path, for Linux: one C call per step instead of
 * several Python-level calls (struct packing, fcntl.fcntl, ctypes). The protocol itself stays
 * in Python (see transport/LAYOUT.md); this module only does what Python cannot do cheaply:
 *   lock(fd, byte, kind)    non-blocking open-file-description byte-range lock: 1 taken,
 *                           0 held by another (no exception on the common "busy" answer)
 *   take(base, fd, slots_offset, stride, last_wake, held)  the reader's look: the futex word,
 *                           then a shared lock on the slot it names, then the slot header
 *   commit(base, fd, slot_offset, slot, seq, length, source_ns, generation, source_seq)
 *                           the writer's publish: header, state even, unlock, wake word, wake
 *   futex_wait(addr, expected, timeout), futex_wake(addr), futex_wait_any([(addr, val)], timeout)
 * Every call that may sleep releases the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif
#define WAKE_OFFSET 256
#define LATEST_SEQ_OFFSET 264
#define LOCK_SLOT0 64
#define MAX_WAITV 128

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

/* take(base, fd, slots_offset, stride, last_wake, held_slots: bytes-like of u32)
 *   -> None (nothing new) | (wake, slot, locked, state, length, source_ns, publish_ns, generation, source_seq)
 * locked: 1 this call took the shared lock, 0 the reader already held the slot, -1 busy (being written). */
static PyObject *py_take(PyObject *self, PyObject *args) {
    unsigned long long base, slots_offset, stride;
    int fd;
    unsigned int last_wake;
    Py_buffer held;
    if (!PyArg_ParseTuple(args, "KiKKIy*", &base, &fd, &slots_offset, &stride, &last_wake, &held)) return NULL;
    uint32_t wake = __atomic_load_n((uint32_t *)(uintptr_t)(base + WAKE_OFFSET), __ATOMIC_ACQUIRE);
    if (wake == last_wake) {
        PyBuffer_Release(&held);
        Py_RETURN_NONE;
    }
    unsigned int slot = wake & 0xff;
    int locked;
    if ((Py_ssize_t)(slot * 4 + 4) > held.len) {
        PyBuffer_Release(&held);
        return Py_BuildValue("(IIiKKLLKKL)", wake, slot, -1, 0ULL, 0ULL, 0LL, 0LL, 0ULL, 0ULL, 0LL);
    }
    uint32_t already = ((uint32_t *)held.buf)[slot];
    PyBuffer_Release(&held);
    if (already) {
        locked = 0;
    } else {
        int r = ofd_lock(fd, LOCK_SLOT0 + slot, F_RDLCK);
        if (r < 0) return PyErr_SetFromErrno(PyExc_OSError);
        if (r == 0) return Py_BuildValue("(IIiKKLLKKL)", wake, slot, -1, 0ULL, 0ULL, 0LL, 0LL, 0ULL, 0ULL, 0LL);
        locked = 1;
    }
    const uint8_t *h = (const uint8_t *)(uintptr_t)(base + slots_offset + slot * stride);
    uint64_t state = __atomic_load_n((const uint64_t *)h, __ATOMIC_ACQUIRE), length, generation, source_seq;
    int64_t source_ns, publish_ns;
    memcpy(&length, h + 8, 8);
    memcpy(&source_ns, h + 16, 8);
    memcpy(&publish_ns, h + 24, 8);
    memcpy(&generation, h + 32, 8);
    memcpy(&source_seq, h + 40, 8);
    return Py_BuildValue("(IIiKKLLKKL)", wake, slot, locked, (unsigned long long)state, (unsigned long long)length,
                         (long long)source_ns, (long long)publish_ns, (unsigned long long)generation, (unsigned long long)source_seq,
                         (long long)realtime_ns());
}

/* commit(base, fd, slot_offset, slot, seq, length, source_ns (-1: now), generation, source_seq) -> publish_ns */
static PyObject *py_commit(PyObject *self, PyObject *args) {
    unsigned long long base, slot_offset, seq, length, generation, source_seq;
    int fd;
    unsigned int slot;
    long long source_ns;
    if (!PyArg_ParseTuple(args, "KiKIKKLKK", &base, &fd, &slot_offset, &slot, &seq, &length, &source_ns, &generation, &source_seq))
        return NULL;
    uint8_t *h = (uint8_t *)(uintptr_t)(base + slot_offset);
    int64_t now = realtime_ns();
    int64_t src = source_ns < 0 ? now : source_ns;
    memcpy(h + 8, &length, 8);
    memcpy(h + 16, &src, 8);
    memcpy(h + 24, &now, 8);
    memcpy(h + 32, &generation, 8);
    memcpy(h + 40, &source_seq, 8);
    __atomic_store_n((uint64_t *)h, 2 * seq, __ATOMIC_RELEASE);
    if (ofd_lock(fd, LOCK_SLOT0 + slot, F_UNLCK) < 0) return PyErr_SetFromErrno(PyExc_OSError);
    __atomic_store_n((uint64_t *)(uintptr_t)(base + LATEST_SEQ_OFFSET), seq, __ATOMIC_RELEASE);
    uint32_t *wake = (uint32_t *)(uintptr_t)(base + WAKE_OFFSET);
    __atomic_store_n(wake, (uint32_t)(((seq & 0xffffff) << 8) | slot), __ATOMIC_RELEASE);
    syscall(SYS_futex, wake, FUTEX_WAKE, 0x7fffffff, NULL, NULL, 0);
    return PyLong_FromLongLong(now);
}

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
    {"take", py_take, METH_VARARGS, "take(base, fd, slots_offset, stride, last_wake, held) -> None or the slot's header"},
    {"commit", py_commit, METH_VARARGS, "commit(base, fd, slot_offset, slot, seq, length, source_ns, generation, source_seq) -> publish_ns"},
    {"futex_wait", py_futex_wait, METH_VARARGS, "futex_wait(addr, expected, timeout): sleep while the word equals expected"},
    {"futex_wake", py_futex_wake, METH_VARARGS, "futex_wake(addr): wake every sleeper on the word"},
    {"futex_wait_any", py_futex_wait_any, METH_VARARGS, "futex_wait_any(words, timeout) -> False if futex_waitv is missing"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastpath", "Pool-topic hot path system calls (Linux).", -1, methods};

PyMODINIT_FUNC PyInit__fastpath(void) { return PyModule_Create(&module); }
