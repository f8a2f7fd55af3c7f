"""The Windows API calls the Windows backend makes, declared once for ctypes (kernel32, advapi32).

Only declarations and thin checked wrappers live here; what shmlaunch does with them is in
``_windows`` (files, locks, processes) and ``_windows_hotpath`` (wake-ups, readers, writers).
Every function is declared with its argument and result types, so a handle or a 64-bit size
is never truncated to a C int.
"""

from __future__ import annotations

import ctypes
import sys
from ctypes import wintypes

if sys.platform != "win32":  # pragma: no cover
    raise ImportError("the Windows backend runs on Windows only")

kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)

HANDLE = wintypes.HANDLE
DWORD = wintypes.DWORD
BOOL = wintypes.BOOL
INVALID_HANDLE_VALUE = HANDLE(-1).value

# files
GENERIC_READ, GENERIC_WRITE = 0x80000000, 0x40000000
READ_CONTROL = 0x00020000
FILE_LIST_DIRECTORY, FILE_READ_ATTRIBUTES = 0x1, 0x80
FILE_SHARE_READ, FILE_SHARE_WRITE, FILE_SHARE_DELETE = 1, 2, 4
CREATE_NEW, OPEN_EXISTING, OPEN_ALWAYS = 1, 3, 4
FILE_ATTRIBUTE_DIRECTORY, FILE_ATTRIBUTE_NORMAL, FILE_ATTRIBUTE_REPARSE_POINT = 0x10, 0x80, 0x400
FILE_FLAG_BACKUP_SEMANTICS, FILE_FLAG_OPEN_REPARSE_POINT = 0x02000000, 0x00200000
# locks
LOCKFILE_FAIL_IMMEDIATELY, LOCKFILE_EXCLUSIVE_LOCK = 1, 2
ERROR_LOCK_VIOLATION, ERROR_NOT_LOCKED, ERROR_IO_PENDING = 33, 158, 997
# events and waits
EVENT_MODIFY_STATE, SYNCHRONIZE = 0x0002, 0x00100000
WAIT_OBJECT_0, WAIT_TIMEOUT, WAIT_FAILED = 0, 0x102, 0xFFFFFFFF
MAXIMUM_WAIT_OBJECTS = 64
# processes and jobs
PROCESS_TERMINATE, PROCESS_SET_INFORMATION, PROCESS_QUERY_LIMITED_INFORMATION = 0x1, 0x200, 0x1000
STILL_ACTIVE = 259
TH32CS_SNAPPROCESS = 0x2
TOKEN_QUERY = 0x8
TOKEN_USER_CLASS = 1
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x2000
JOB_OBJECT_LIMIT_BREAKAWAY_OK = 0x800
JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS = 9
SE_FILE_OBJECT, OWNER_SECURITY_INFORMATION = 1, 1


class OVERLAPPED(ctypes.Structure):
    _fields_ = [("Internal", ctypes.c_void_p), ("InternalHigh", ctypes.c_void_p), ("Offset", DWORD), ("OffsetHigh", DWORD),
                ("hEvent", HANDLE)]


class BY_HANDLE_FILE_INFORMATION(ctypes.Structure):
    _fields_ = [("dwFileAttributes", DWORD), ("ftCreationTime", wintypes.FILETIME), ("ftLastAccessTime", wintypes.FILETIME),
                ("ftLastWriteTime", wintypes.FILETIME), ("dwVolumeSerialNumber", DWORD), ("nFileSizeHigh", DWORD),
                ("nFileSizeLow", DWORD), ("nNumberOfLinks", DWORD), ("nFileIndexHigh", DWORD), ("nFileIndexLow", DWORD)]


class SECURITY_ATTRIBUTES(ctypes.Structure):
    _fields_ = [("nLength", DWORD), ("lpSecurityDescriptor", ctypes.c_void_p), ("bInheritHandle", BOOL)]


class PROCESSENTRY32W(ctypes.Structure):
    _fields_ = [("dwSize", DWORD), ("cntUsage", DWORD), ("th32ProcessID", DWORD), ("th32DefaultHeapID", ctypes.c_void_p),
                ("th32ModuleID", DWORD), ("cntThreads", DWORD), ("th32ParentProcessID", DWORD), ("pcPriClassBase", ctypes.c_long),
                ("dwFlags", DWORD), ("szExeFile", ctypes.c_wchar * 260)]


class PROCESS_MEMORY_COUNTERS(ctypes.Structure):
    _fields_ = [("cb", DWORD), ("PageFaultCount", DWORD)] + [
        (name, ctypes.c_size_t) for name in ("PeakWorkingSetSize", "WorkingSetSize", "QuotaPeakPagedPoolUsage", "QuotaPagedPoolUsage",
                                             "QuotaPeakNonPagedPoolUsage", "QuotaNonPagedPoolUsage", "PagefileUsage", "PeakPagefileUsage")
    ]


class IO_COUNTERS(ctypes.Structure):
    _fields_ = [(name, ctypes.c_ulonglong) for name in ("ReadOperationCount", "WriteOperationCount", "OtherOperationCount",
                                                         "ReadTransferCount", "WriteTransferCount", "OtherTransferCount")]


class JOBOBJECT_BASIC_LIMIT_INFORMATION(ctypes.Structure):
    _fields_ = [("PerProcessUserTimeLimit", ctypes.c_int64), ("PerJobUserTimeLimit", ctypes.c_int64), ("LimitFlags", DWORD),
                ("MinimumWorkingSetSize", ctypes.c_size_t), ("MaximumWorkingSetSize", ctypes.c_size_t), ("ActiveProcessLimit", DWORD),
                ("Affinity", ctypes.c_size_t), ("PriorityClass", DWORD), ("SchedulingClass", DWORD)]


class JOBOBJECT_EXTENDED_LIMIT_INFORMATION(ctypes.Structure):
    _fields_ = [("BasicLimitInformation", JOBOBJECT_BASIC_LIMIT_INFORMATION), ("IoInfo", IO_COUNTERS),
                ("ProcessMemoryLimit", ctypes.c_size_t), ("JobMemoryLimit", ctypes.c_size_t),
                ("PeakProcessMemoryUsed", ctypes.c_size_t), ("PeakJobMemoryUsed", ctypes.c_size_t)]


def _declare(dll, name: str, restype, *argtypes):
    fn = getattr(dll, name)
    fn.restype = restype
    fn.argtypes = argtypes
    return fn


P = ctypes.POINTER
LockFileEx = _declare(kernel32, "LockFileEx", BOOL, HANDLE, DWORD, DWORD, DWORD, DWORD, P(OVERLAPPED))
UnlockFileEx = _declare(kernel32, "UnlockFileEx", BOOL, HANDLE, DWORD, DWORD, DWORD, P(OVERLAPPED))
CreateFileW = _declare(kernel32, "CreateFileW", HANDLE, wintypes.LPCWSTR, DWORD, DWORD, ctypes.c_void_p, DWORD, DWORD, HANDLE)
CreateDirectoryW = _declare(kernel32, "CreateDirectoryW", BOOL, wintypes.LPCWSTR, P(SECURITY_ATTRIBUTES))
GetFileInformationByHandle = _declare(kernel32, "GetFileInformationByHandle", BOOL, HANDLE, P(BY_HANDLE_FILE_INFORMATION))
GetDiskFreeSpaceExW = _declare(kernel32, "GetDiskFreeSpaceExW", BOOL, wintypes.LPCWSTR, P(ctypes.c_ulonglong), P(ctypes.c_ulonglong),
                               P(ctypes.c_ulonglong))
GetSystemTimeAsFileTime = _declare(kernel32, "GetSystemTimeAsFileTime", None, P(wintypes.FILETIME))
SetFileTime = _declare(kernel32, "SetFileTime", BOOL, HANDLE, P(wintypes.FILETIME), P(wintypes.FILETIME), P(wintypes.FILETIME))
CloseHandle = _declare(kernel32, "CloseHandle", BOOL, HANDLE)
CreateEventW = _declare(kernel32, "CreateEventW", HANDLE, ctypes.c_void_p, BOOL, BOOL, wintypes.LPCWSTR)
OpenEventW = _declare(kernel32, "OpenEventW", HANDLE, DWORD, BOOL, wintypes.LPCWSTR)
SetEvent = _declare(kernel32, "SetEvent", BOOL, HANDLE)
WaitForSingleObject = _declare(kernel32, "WaitForSingleObject", DWORD, HANDLE, DWORD)
WaitForMultipleObjects = _declare(kernel32, "WaitForMultipleObjects", DWORD, DWORD, P(HANDLE), BOOL, DWORD)
OpenProcess = _declare(kernel32, "OpenProcess", HANDLE, DWORD, BOOL, DWORD)
GetExitCodeProcess = _declare(kernel32, "GetExitCodeProcess", BOOL, HANDLE, P(DWORD))
GetProcessTimes = _declare(kernel32, "GetProcessTimes", BOOL, HANDLE, P(wintypes.FILETIME), P(wintypes.FILETIME), P(wintypes.FILETIME),
                           P(wintypes.FILETIME))
GetPriorityClass = _declare(kernel32, "GetPriorityClass", DWORD, HANDLE)
GetProcessAffinityMask = _declare(kernel32, "GetProcessAffinityMask", BOOL, HANDLE, P(ctypes.c_size_t), P(ctypes.c_size_t))
SetProcessAffinityMask = _declare(kernel32, "SetProcessAffinityMask", BOOL, HANDLE, ctypes.c_size_t)
SetPriorityClass = _declare(kernel32, "SetPriorityClass", BOOL, HANDLE, DWORD)
GenerateConsoleCtrlEvent = _declare(kernel32, "GenerateConsoleCtrlEvent", BOOL, DWORD, DWORD)
TerminateProcess = _declare(kernel32, "TerminateProcess", BOOL, HANDLE, ctypes.c_uint)
GetCurrentProcess = _declare(kernel32, "GetCurrentProcess", HANDLE)
CreateToolhelp32Snapshot = _declare(kernel32, "CreateToolhelp32Snapshot", HANDLE, DWORD, DWORD)
Process32FirstW = _declare(kernel32, "Process32FirstW", BOOL, HANDLE, P(PROCESSENTRY32W))
Process32NextW = _declare(kernel32, "Process32NextW", BOOL, HANDLE, P(PROCESSENTRY32W))
K32GetProcessMemoryInfo = _declare(kernel32, "K32GetProcessMemoryInfo", BOOL, HANDLE, P(PROCESS_MEMORY_COUNTERS), DWORD)
CreateJobObjectW = _declare(kernel32, "CreateJobObjectW", HANDLE, ctypes.c_void_p, wintypes.LPCWSTR)
SetInformationJobObject = _declare(kernel32, "SetInformationJobObject", BOOL, HANDLE, ctypes.c_int, ctypes.c_void_p, DWORD)
AssignProcessToJobObject = _declare(kernel32, "AssignProcessToJobObject", BOOL, HANDLE, HANDLE)
LocalFree = _declare(kernel32, "LocalFree", ctypes.c_void_p, ctypes.c_void_p)
OpenProcessToken = _declare(advapi32, "OpenProcessToken", BOOL, HANDLE, DWORD, P(HANDLE))
GetTokenInformation = _declare(advapi32, "GetTokenInformation", BOOL, HANDLE, ctypes.c_int, ctypes.c_void_p, DWORD, P(DWORD))
ConvertSidToStringSidW = _declare(advapi32, "ConvertSidToStringSidW", BOOL, ctypes.c_void_p, P(wintypes.LPWSTR))
ConvertStringSecurityDescriptorToSecurityDescriptorW = _declare(
    advapi32, "ConvertStringSecurityDescriptorToSecurityDescriptorW", BOOL, wintypes.LPCWSTR, DWORD, P(ctypes.c_void_p), P(DWORD))
GetSecurityInfo = _declare(advapi32, "GetSecurityInfo", DWORD, HANDLE, ctypes.c_int, DWORD, P(ctypes.c_void_p), P(ctypes.c_void_p),
                           P(ctypes.c_void_p), P(ctypes.c_void_p), P(ctypes.c_void_p))


def last_error(what: str) -> OSError:
    """The thread's last Windows error as an OSError (FileNotFoundError for a missing file, and
    so on: Python maps the Windows code), prefixed with what was being done."""
    code = ctypes.get_last_error()
    return OSError(None, f"{what}: {ctypes.FormatError(code).strip()}", None, code)


def sid_string(sid: int) -> str:
    """A SID (its address) as the text "S-1-5-21-...": what two SIDs are compared by."""
    text = wintypes.LPWSTR()
    if not ConvertSidToStringSidW(sid, ctypes.byref(text)):
        raise last_error("ConvertSidToStringSid")
    try:
        return text.value
    finally:
        LocalFree(ctypes.cast(text, ctypes.c_void_p))


def token_user_sid(process: int) -> str:
    """The user a process runs as, as a SID string (``process`` is a handle to it)."""
    token = HANDLE()
    if not OpenProcessToken(process, TOKEN_QUERY, ctypes.byref(token)):
        raise last_error("OpenProcessToken")
    try:
        size = DWORD()
        GetTokenInformation(token, TOKEN_USER_CLASS, None, 0, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        if not GetTokenInformation(token, TOKEN_USER_CLASS, buf, size, ctypes.byref(size)):
            raise last_error("GetTokenInformation")
        return sid_string(ctypes.c_void_p.from_buffer(buf).value)  # TOKEN_USER starts with the SID's address
    finally:
        CloseHandle(token)


def owner_sid(handle: int) -> str:
    """The owner of the object ``handle`` refers to (a file or directory), as a SID string."""
    owner, descriptor = ctypes.c_void_p(), ctypes.c_void_p()
    err = GetSecurityInfo(handle, SE_FILE_OBJECT, OWNER_SECURITY_INFORMATION, ctypes.byref(owner), None, None, None,
                          ctypes.byref(descriptor))
    if err:
        raise OSError(None, f"GetSecurityInfo: {ctypes.FormatError(err).strip()}", None, err)
    try:
        return sid_string(owner.value)
    finally:
        LocalFree(descriptor)


def filetime_int(ft: wintypes.FILETIME) -> int:
    """A FILETIME as one integer of 100 ns units."""
    return ft.dwHighDateTime << 32 | ft.dwLowDateTime
