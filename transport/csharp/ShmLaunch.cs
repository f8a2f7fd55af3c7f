// shmlaunch pool topics for C# (Mono or .NET on Linux): Reader and Writer following
// transport/LAYOUT.md, segment layout version 1, the same protocol as Python and C++:
// byte-range OFD locks for slot holds and writer ownership, a futex word for wake-ups.
//
//   using (var r = new ShmLaunch.Reader("camera/image"))
//   using (var s = r.Receive(1000)) if (s != null) Use(s.Data, s.Length, s.Seq, s.SourceNs);
//
// Build: mcs -unsafe -out:app.exe ShmLaunch.cs Layout.g.cs App.cs (Layout.g.cs is generated from transport/_layout.py)
using System;
using System.Collections.Generic;
using System.IO;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;

namespace ShmLaunch
{
    public class ShmError : Exception { public ShmError(string m) : base(m) { } }
    public class TopicNotFound : ShmError { public TopicNotFound(string m) : base(m) { } }
    public class TopicMismatch : ShmError { public TopicMismatch(string m) : base(m) { } }
    public class WriterBusy : ShmError { public WriterBusy(string m) : base(m) { } }
    public class SegmentCorrupt : ShmError { public SegmentCorrupt(string m) : base(m) { } }
    /// <summary>A segment of another layout version (written by another shmlaunch release): Python's LayoutVersionError.</summary>
    public class LayoutVersion : TopicMismatch { public LayoutVersion(string m) : base(m) { } }

    static class Native
    {
        [StructLayout(LayoutKind.Sequential)]
        public struct Flock { public short Type; public short Whence; public long Start; public long Len; public int Pid; }
        [StructLayout(LayoutKind.Sequential)]
        public struct Timespec { public long Sec; public long Nsec; }

        public const int O_RDONLY = 0, O_RDWR = 2, O_NONBLOCK = 0x800, O_DIRECTORY = 0x10000, O_NOFOLLOW = 0x20000, O_CLOEXEC = 0x80000;
        public const int PROT_RW = 3, MAP_SHARED = 1;
        public const int F_OFD_GETLK = 36, F_OFD_SETLK = 37;
        public const short F_RDLCK = 0, F_WRLCK = 1, F_UNLCK = 2;
        public const long SYS_futex = 202;  // x86_64; aarch64 is 98
        public const int FUTEX_WAIT = 0, FUTEX_WAKE = 1;

        [DllImport("libc", SetLastError = true)] public static extern int open(string path, int flags);
        [DllImport("libc", SetLastError = true)] public static extern int openat(int dirfd, string path, int flags);
        [DllImport("libc", SetLastError = true)] public static extern IntPtr read(int fd, byte[] buf, UIntPtr count);
        [DllImport("libc", SetLastError = true)] public static extern int fstat(int fd, byte[] buf);
        [DllImport("libc")] public static extern uint geteuid();
        [DllImport("libc", SetLastError = true)] public static extern int close(int fd);
        [DllImport("libc", SetLastError = true)] public static extern long lseek(int fd, long offset, int whence);
        [DllImport("libc", SetLastError = true)] public static extern IntPtr mmap(IntPtr addr, UIntPtr len, int prot, int flags, int fd, IntPtr off);
        [DllImport("libc", SetLastError = true)] public static extern int munmap(IntPtr addr, UIntPtr len);
        [DllImport("libc", SetLastError = true)] public static extern int fcntl(int fd, int cmd, ref Flock fl);
        [DllImport("libc", SetLastError = true)] public static extern long syscall(long n, IntPtr addr, int op, uint val, ref Timespec ts, IntPtr a2, int v3);
        [DllImport("libc", SetLastError = true, EntryPoint = "syscall")] public static extern long syscall_nots(long n, IntPtr addr, int op, uint val, IntPtr ts, IntPtr a2, int v3);
        [DllImport("libc")] public static extern int getpid();
        [DllImport("libc")] public static extern uint getuid();

        [DllImport("libc")] static extern int uname(byte[] buf);
        static long futexNumber;
        static string machine;
        static string Machine()
        {
            if (machine == null)
            {
                var buf = new byte[65 * 6];
                uname(buf);
                machine = System.Text.Encoding.ASCII.GetString(buf, 65 * 4, 65).TrimEnd('\0');
            }
            return machine;
        }

        /// <summary>(mode, uid, size) of an open file: struct stat's layout differs between x86_64 and aarch64.</summary>
        public static void Stat(int fd, out uint mode, out uint uid, out long size)
        {
            var b = new byte[256];
            if (fstat(fd, b) != 0) throw new ShmError("fstat failed: errno " + Marshal.GetLastWin32Error());
            bool arm = Machine() == "aarch64";
            mode = BitConverter.ToUInt32(b, arm ? 16 : 24);
            uid = BitConverter.ToUInt32(b, arm ? 24 : 28);
            size = BitConverter.ToInt64(b, 48);
        }
        /// <summary>SYS_futex of this machine: 202 on x86_64, 98 on aarch64 (from uname's machine field).</summary>
        public static long Futex()
        {
            if (futexNumber == 0) futexNumber = Machine() == "aarch64" ? 98 : SYS_futex;
            return futexNumber;
        }
    }

    public class TopicConfig
    {
        public ulong Capacity; public uint Pool; public string Typestr = ""; public List<ulong> Shape = new List<ulong>(); public string Segment = "";
    }

    public static class Clock
    {
        static readonly long Epoch = new DateTime(1970, 1, 1, 0, 0, 0, DateTimeKind.Utc).Ticks;
        public static long RealtimeNs() => (DateTime.UtcNow.Ticks - Epoch) * 100;
        public static long MonotonicMs() => System.Diagnostics.Stopwatch.GetTimestamp() * 1000 / System.Diagnostics.Stopwatch.Frequency;
    }

    /// <summary>One mapping of a topic's segment and its lock bytes (released when the process dies).</summary>
    public unsafe class Segment : IDisposable
    {
        const int MaxRegistryBytes = 16 << 20;
        public readonly TopicConfig Config;
        public readonly byte* Base;
        readonly int fd;
        readonly ulong size;
        ulong stride, slotsOffset;

        /// <summary>Where runtime directories go, as Python's SHM_ROOT: /dev/shm, or /tmp where there is none.</summary>
        public static string ShmRoot() => Directory.Exists("/dev/shm") ? "/dev/shm" : "/tmp";

        /// <summary>The runtime directory of the graph called graph: ShmRoot()/shmlaunch-euid-graph (attach by name).</summary>
        public static string GraphRuntimeDir(string graph) => ShmRoot() + "/shmlaunch-" + Native.geteuid() + "-" + graph;

        /// <summary>$SHMLAUNCH_RUNTIME_DIR, else GraphRuntimeDir(graph): the rule Python and C++ follow.</summary>
        public static string RuntimeDir(string graph = "default")
        {
            var env = Environment.GetEnvironmentVariable("SHMLAUNCH_RUNTIME_DIR");
            return string.IsNullOrEmpty(env) ? GraphRuntimeDir(graph) : env;
        }

        /// <summary>Names of the graphs with a runtime directory of this user: what "not found" suggests.</summary>
        public static List<string> GraphsPresent()
        {
            string prefix = "shmlaunch-" + Native.geteuid() + "-";
            var names = new List<string>();
            try
            {
                foreach (var path in Directory.GetDirectories(ShmRoot(), prefix + "*")) names.Add(Path.GetFileName(path).Substring(prefix.Length));
            }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
            names.Sort(StringComparer.Ordinal);
            return names;
        }

        static string GraphsHint()
        {
            var graphs = GraphsPresent();
            if (graphs.Count == 0) return " (no graph has a runtime directory: is it running?)";
            return " (graphs with a runtime directory: " + string.Join(", ", graphs)
                + "; open one by name: Segment.GraphRuntimeDir(NAME), --graph NAME, or SHMLAUNCH_RUNTIME_DIR)";
        }

        /// <summary>Open a runtime directory that is a real directory (never a symlink), this user's, closed to others.</summary>
        public static int OpenRuntimeDir(string dir, string action)
        {
            int fd = Native.open(dir, Native.O_RDONLY | Native.O_DIRECTORY | Native.O_NOFOLLOW | Native.O_CLOEXEC);
            if (fd < 0)
            {
                int err = Marshal.GetLastWin32Error();
                if (err == 2) throw new TopicNotFound(action + ": there is no runtime directory " + dir + GraphsHint());
                throw new ShmError(action + ": runtime directory " + dir + " is a symlink or cannot be opened (errno " + err + "); shmlaunch never follows one");
            }
            Native.Stat(fd, out uint mode, out uint uid, out long _);
            string why = null;
            if (uid != Native.geteuid()) why = "belongs to uid " + uid + ", not to this user (" + Native.geteuid() + ")";
            else if ((mode & 0x3f) != 0) why = "is open to other users (mode " + Convert.ToString(mode & 0x1ff, 8) + "; it must be 700)";
            if (why != null) { Native.close(fd); throw new ShmError(action + ": runtime directory " + dir + " " + why + "; refusing it"); }
            return fd;
        }

        /// <summary>A registry's segment must be a plain file name: NAME.pool, no '/' or '..'.</summary>
        public static bool PlainSegmentName(string name) =>
            name.Length > 5 && name.Length <= 205 && Regex.IsMatch(name, "^[A-Za-z0-9_][A-Za-z0-9_.\\-]*\\.pool$");

        static string ReadBounded(int dirFd, string name)
        {
            int fd = Native.openat(dirFd, name, Native.O_RDONLY | Native.O_NONBLOCK | Native.O_NOFOLLOW | Native.O_CLOEXEC);
            if (fd < 0) return null;
            try
            {
                var ms = new MemoryStream();
                var buf = new byte[65536];
                long n;
                while ((n = (long)Native.read(fd, buf, (UIntPtr)buf.Length)) > 0 && ms.Length <= MaxRegistryBytes) ms.Write(buf, 0, (int)n);
                if (ms.Length > MaxRegistryBytes) throw new SegmentCorrupt("cannot read registry " + name + ": larger than 16 MiB");
                return System.Text.Encoding.UTF8.GetString(ms.ToArray());
            }
            finally { Native.close(fd); }
        }

        public static TopicConfig ReadRegistry(int dirFd, string dir, string topic, string action)
        {
            string text = ReadBounded(dirFd, "registry.yaml");
            if (text == null) throw new TopicNotFound(action + ": the registry in " + dir + " does not list it" + GraphsHint());
            string prefix = "  \"" + topic + "\": ";
            foreach (var line in text.Split('\n'))
            {
                if (!line.StartsWith(prefix, StringComparison.Ordinal)) continue;
                var cfg = new TopicConfig();
                string body = line.Substring(prefix.Length);
                try
                {
                    cfg.Capacity = ulong.Parse(Regex.Match(body, "\"capacity\": (\\d+)").Groups[1].Value);
                    cfg.Pool = uint.Parse(Regex.Match(body, "\"pool\": (\\d+)").Groups[1].Value);
                    var shape = Regex.Match(body, "\"shape\": \\[([0-9, ]*)\\]");
                    if (shape.Success)
                        foreach (var d in shape.Groups[1].Value.Split(new[] { ',', ' ' }, StringSplitOptions.RemoveEmptyEntries)) cfg.Shape.Add(ulong.Parse(d));
                }
                catch (Exception e) when (e is FormatException || e is OverflowException)
                {
                    throw new SegmentCorrupt("cannot read registry " + dir + "/registry.yaml: topic '" + topic + "': capacity, pool or shape is not a number");
                }
                cfg.Segment = Regex.Match(body, "\"segment\": \"([^\"]+)\"").Groups[1].Value;
                cfg.Typestr = Regex.Match(body, "\"typestr\": \"([^\"]*)\"").Groups[1].Value;
                if (cfg.Capacity < 1 || cfg.Capacity > Layout.MAX_CAPACITY || cfg.Pool < 1 || cfg.Pool > Layout.MAX_POOL || (ulong)cfg.Shape.Count > Layout.MAX_NDIM)
                    throw new SegmentCorrupt("cannot read registry " + dir + "/registry.yaml: topic '" + topic + "': capacity " + cfg.Capacity + " or pool " + cfg.Pool + " is out of range");
                if (!PlainSegmentName(cfg.Segment))
                    throw new SegmentCorrupt("cannot read registry " + dir + "/registry.yaml: topic '" + topic + "': segment '" + cfg.Segment + "' is not a plain segment file name (NAME.pool, no '/' or '..')");
                return cfg;
            }
            throw new TopicNotFound(action + ": the registry in " + dir + " does not list it" + GraphsHint());
        }

        public Segment(string dir, string topic, ulong expectCapacity, string action)
        {
            int dirFd = OpenRuntimeDir(dir, action);
            try
            {
                Config = ReadRegistry(dirFd, dir, topic, action);
                if (expectCapacity != 0 && expectCapacity != Config.Capacity)
                    throw new TopicMismatch(action + ": requested capacity is " + expectCapacity + ", the registry says " + Config.Capacity);
                fd = Native.openat(dirFd, Config.Segment, Native.O_RDWR | Native.O_NOFOLLOW | Native.O_CLOEXEC);
            }
            finally { Native.close(dirFd); }
            string path = Path.Combine(dir, Config.Segment);
            if (fd < 0) throw new TopicNotFound(action + ": its segment " + path + " is missing");
            Native.Stat(fd, out uint mode, out uint _, out long fileSize);
            size = (ulong)fileSize;
            bool regular = (mode & 0xf000) == 0x8000;
            if (!regular || size < Layout.HEADER_SIZE)
            {
                Native.close(fd);
                throw new SegmentCorrupt(action + ": segment " + path + (regular ? " is " + size + " bytes, shorter than a header" : " is not a regular file"));
            }
            IntPtr p = Native.mmap(IntPtr.Zero, (UIntPtr)size, Native.PROT_RW, Native.MAP_SHARED, fd, IntPtr.Zero);
            if (p == new IntPtr(-1)) { Native.close(fd); throw new SegmentCorrupt(action + ": cannot map " + path); }
            Base = (byte*)p;
            try { CheckHeader(action, path); }
            catch { Dispose(); throw; }
        }

        // The same checks, in the same order and with the same words, as Python's header_problem and
        // check_header (the cross-language test feeds all three clients the same crafted segments).
        void CheckHeader(string action, string path)
        {
            Func<string, Exception> corrupt = problem => new SegmentCorrupt(action + ": segment " + path + " is corrupt: its header's " + problem);
            var magic = new byte[Layout.HEADER_MAGIC_SIZE];
            Marshal.Copy((IntPtr)(Base + Layout.HEADER_MAGIC_OFFSET), magic, 0, magic.Length);
            if (System.Text.Encoding.ASCII.GetString(magic) != Layout.MAGIC)
                throw corrupt("magic is 0x" + BitConverter.ToString(magic).Replace("-", "").ToLowerInvariant() + ", expected " + Layout.MAGIC);
            uint version = *(uint*)(Base + Layout.HEADER_LAYOUT_VERSION_OFFSET);
            if (version != Layout.LAYOUT_VERSION)
                throw new LayoutVersion(action + ": segment " + path + " has layout version " + version + ", this shmlaunch uses " + Layout.LAYOUT_VERSION);
            uint pool = *(uint*)(Base + Layout.HEADER_POOL_OFFSET), ndim = *(uint*)(Base + Layout.HEADER_NDIM_OFFSET);
            ulong capacity = *(ulong*)(Base + Layout.HEADER_CAPACITY_OFFSET);
            ulong stride = *(ulong*)(Base + Layout.HEADER_SLOT_STRIDE_OFFSET), slotsOffset = *(ulong*)(Base + Layout.HEADER_SLOTS_OFFSET_OFFSET);
            // Every field bounded before any product is formed: no overflow, whatever the file says.
            if (pool == 0 || pool > Layout.MAX_POOL) throw corrupt("pool " + pool + " is outside 1.." + Layout.MAX_POOL);
            if (capacity == 0 || capacity > Layout.MAX_CAPACITY) throw corrupt("capacity " + capacity + " is outside 1.." + Layout.MAX_CAPACITY);
            if (slotsOffset < Layout.SLOTS_OFFSET || slotsOffset % Layout.ALIGN != 0 || slotsOffset > size)
                throw corrupt("slots_offset " + slotsOffset + " is not a multiple of " + Layout.ALIGN + " from " + Layout.SLOTS_OFFSET + " to the file size " + size);
            ulong minStride = (Layout.SLOT_HEADER_SIZE + capacity + Layout.ALIGN - 1) / Layout.ALIGN * Layout.ALIGN;
            if (stride < minStride || stride % Layout.ALIGN != 0 || stride > (size - slotsOffset) / pool)
                throw corrupt("slot_stride " + stride + " does not fit: capacity " + capacity + " needs at least " + minStride + ", and " + pool
                              + " slots from offset " + slotsOffset + " must end within the file size " + size);
            if (ndim > Layout.MAX_NDIM) throw corrupt("ndim " + ndim + " is above " + Layout.MAX_NDIM);
            bool padded = true, ended = false;
            for (ulong i = 0; i < Layout.HEADER_DTYPE_SIZE; i++)
            {
                byte c = Base[Layout.HEADER_DTYPE_OFFSET + i];
                if (c == 0) ended = true;
                else if (ended || c < 0x21 || c > 0x7e) padded = false;
            }
            if (!padded) throw corrupt("dtype is not an ASCII type string padded with NULs");
            if (capacity != Config.Capacity) throw new TopicMismatch(action + ": the segment header capacity is " + capacity + ", the registry says " + Config.Capacity);
            if (pool != Config.Pool) throw new TopicMismatch(action + ": the segment header pool is " + pool + ", the registry says " + Config.Pool);
            string typestr = "";
            for (ulong i = 0; i < Layout.HEADER_DTYPE_SIZE && Base[Layout.HEADER_DTYPE_OFFSET + i] != 0; i++) typestr += (char)Base[Layout.HEADER_DTYPE_OFFSET + i];
            if (typestr != Config.Typestr)
                throw new TopicMismatch(action + ": the segment header dtype is " + (typestr == "" ? "None" : typestr) + ", the registry says " + (Config.Typestr == "" ? "None" : Config.Typestr));
            var shape = new List<ulong>();
            for (uint k = 0; k < ndim; k++) shape.Add(*(ulong*)(Base + Layout.HEADER_SHAPE_OFFSET + 8 * k));
            if (string.Join(",", shape) != string.Join(",", Config.Shape))
                throw new TopicMismatch(action + ": the segment header shape is " + ShapeText(shape) + ", the registry says " + ShapeText(Config.Shape));
            this.stride = stride;
            this.slotsOffset = slotsOffset;
        }

        // As Python and C++ write a shape: [4, 6, 3], or None for a topic without one.
        static string ShapeText(List<ulong> shape) => shape.Count == 0 ? "None" : "[" + string.Join(", ", shape) + "]";

        public ulong SlotOffset(uint slot) => slotsOffset + slot * stride;
        public byte* Payload(uint slot) => Base + SlotOffset(slot) + Layout.SLOT_HEADER_SIZE;
        public uint* Wake => (uint*)(Base + Layout.HEADER_WAKE_OFFSET);

        public bool Lock(long b, short type)
        {
            var fl = new Native.Flock { Type = type, Whence = 0, Start = b, Len = 1, Pid = 0 };
            if (Native.fcntl(fd, Native.F_OFD_SETLK, ref fl) == 0) return true;
            int err = Marshal.GetLastWin32Error();
            if (err == 11 || err == 13) return false;  // EAGAIN, EACCES: another holder
            throw new ShmError("lock failed: errno " + err);
        }
        public void Unlock(long b) => Lock(b, Native.F_UNLCK);
        public bool HeldByOthers(long b)
        {
            var fl = new Native.Flock { Type = Native.F_WRLCK, Whence = 0, Start = b, Len = 1, Pid = 0 };
            Native.fcntl(fd, Native.F_OFD_GETLK, ref fl);
            return fl.Type != Native.F_UNLCK;
        }

        public void FutexWait(uint expected, long timeoutNs)
        {
            if (timeoutNs < 0) { Native.syscall_nots(Native.Futex(), (IntPtr)Wake, Native.FUTEX_WAIT, expected, IntPtr.Zero, IntPtr.Zero, 0); return; }
            var ts = new Native.Timespec { Sec = timeoutNs / 1000000000, Nsec = timeoutNs % 1000000000 };
            Native.syscall(Native.Futex(), (IntPtr)Wake, Native.FUTEX_WAIT, expected, ref ts, IntPtr.Zero, 0);
        }
        public void FutexWake() => Native.syscall_nots(Native.Futex(), (IntPtr)Wake, Native.FUTEX_WAKE, 0x7fffffff, IntPtr.Zero, IntPtr.Zero, 0);

        bool disposed;
        public void Dispose()
        {
            if (disposed) return;
            disposed = true;
            Native.munmap((IntPtr)Base, (UIntPtr)size);
            Native.close(fd);  // drops every lock of this open file description
        }
    }

    /// <summary>A received message, its slot held until Dispose.</summary>
    public unsafe class Sample : IDisposable
    {
        readonly Reader owner; readonly uint slot; bool released;
        public readonly byte* Data; public readonly int Length; public readonly ulong Seq, SourceSeq; public readonly long SourceNs, PublishNs;
        internal Sample(Reader owner, uint slot, byte* data, int length, ulong seq, long sourceNs, long publishNs, ulong sourceSeq)
        {
            this.owner = owner; this.slot = slot; Data = data; Length = length; Seq = seq; SourceNs = sourceNs; PublishNs = publishNs;
            SourceSeq = sourceSeq;
        }
        public byte[] ToArray() { var a = new byte[Length]; Marshal.Copy((IntPtr)Data, a, 0, Length); return a; }
        public void Dispose() { if (!released) { released = true; owner.Release(slot); } }
    }

    /// <summary>Opens an existing topic and receives its newest messages.</summary>
    public unsafe class Reader : IDisposable
    {
        readonly Segment seg; readonly uint[] holds;
        uint lastWake; ulong lastSeq;
        public ulong Missed { get; private set; }
        public TopicConfig Config => seg.Config;

        public Reader(string topic, string dir = null, ulong expectCapacity = 0)
        {
            seg = new Segment(dir ?? Segment.RuntimeDir(), topic, expectCapacity, "cannot open topic '" + topic + "' for reading");
            holds = new uint[seg.Config.Pool];
            seg.Lock((long)Layout.LOCK_PRESENCE, Native.F_RDLCK);
        }

        /// <summary>The newest message not seen yet, waiting up to timeoutMs (negative: forever); null on timeout.</summary>
        public Sample Receive(int timeoutMs)
        {
            long deadline = timeoutMs < 0 ? -1 : Clock.MonotonicMs() + timeoutMs;
            while (true)
            {
                uint w = System.Threading.Volatile.Read(ref *seg.Wake);
                if (w != lastWake)
                {
                    var s = Take(w);
                    if (s != null) return s;
                    continue;
                }
                long left = deadline < 0 ? -1 : deadline - Clock.MonotonicMs();
                if (deadline >= 0 && left <= 0) return null;
                seg.FutexWait(w, left < 0 ? -1 : left * 1000000);
            }
        }

        /// <summary>The newest message not seen yet, or null at once.</summary>
        public Sample ReceiveNowait()
        {
            uint w = System.Threading.Volatile.Read(ref *seg.Wake);
            return w == lastWake ? null : Take(w);
        }

        [Obsolete("use Receive")] public Sample Read(int timeoutMs) => Receive(timeoutMs);

        Sample Take(uint w)
        {
            lastWake = w;
            uint slot = w & Layout.WAKE_SLOT_MASK;
            if (slot >= holds.Length) return null;
            if (holds[slot] == 0 && !seg.Lock((long)Layout.LOCK_SLOT0 + slot, Native.F_RDLCK)) return null;
            byte* h = seg.Base + seg.SlotOffset(slot);
            ulong state = *(ulong*)(h + Layout.SLOT_STATE_OFFSET), length = *(ulong*)(h + Layout.SLOT_LENGTH_OFFSET);
            ulong seq = state >> 1;
            if ((state & 1) != 0 || seq <= lastSeq || length > seg.Config.Capacity)
            {
                if (holds[slot] == 0) seg.Unlock((long)Layout.LOCK_SLOT0 + slot);
                return null;
            }
            holds[slot]++;
            if (lastSeq != 0 && seq > lastSeq + 1) Missed += seq - lastSeq - 1;
            lastSeq = seq;
            return new Sample(this, slot, seg.Payload(slot), (int)length, seq, *(long*)(h + Layout.SLOT_SOURCE_NS_OFFSET),
                              *(long*)(h + Layout.SLOT_PUBLISH_NS_OFFSET), *(ulong*)(h + Layout.SLOT_SOURCE_SEQ_OFFSET));
        }

        internal void Release(uint slot) { if (--holds[slot] == 0) seg.Unlock((long)Layout.LOCK_SLOT0 + slot); }
        public bool WriterAlive => seg.HeldByOthers((long)Layout.LOCK_WRITER);
        public void Dispose() => seg.Dispose();
    }

    /// <summary>The topic's single writer; a second live writer gets WriterBusy.</summary>
    public unsafe class Writer : IDisposable
    {
        readonly Segment seg; readonly List<uint> order = new List<uint>();
        ulong seq, generation;
        public TopicConfig Config => seg.Config;

        public Writer(string topic, string dir = null)
        {
            seg = new Segment(dir ?? Segment.RuntimeDir(), topic, 0, "cannot open topic '" + topic + "' for writing");
            if (!seg.Lock((long)Layout.LOCK_WRITER, Native.F_WRLCK))
            {
                ulong pid = *(ulong*)(seg.Base + Layout.HEADER_WRITER_PID_OFFSET);
                seg.Dispose();
                throw new WriterBusy("cannot open topic '" + topic + "' for writing: another writer (pid " + pid + ") is alive; a topic has exactly one writer");
            }
            var ages = new List<KeyValuePair<ulong, uint>>();
            for (uint i = 0; i < seg.Config.Pool; i++)
            {
                ulong st = *(ulong*)(seg.Base + seg.SlotOffset(i) + Layout.SLOT_STATE_OFFSET);
                seq = Math.Max(seq, (st + 1) >> 1);
                ages.Add(new KeyValuePair<ulong, uint>((st & 1) != 0 ? 0 : st, i));
            }
            ages.Sort((a, b) => a.Key.CompareTo(b.Key));
            foreach (var a in ages) order.Add(a.Value);
            generation = *(ulong*)(seg.Base + Layout.HEADER_WRITER_GENERATION_OFFSET) + 1;
            *(ulong*)(seg.Base + Layout.HEADER_WRITER_PID_OFFSET) = (ulong)Native.getpid();
            *(ulong*)(seg.Base + Layout.HEADER_WRITER_GENERATION_OFFSET) = generation;
            *(long*)(seg.Base + Layout.HEADER_WRITER_ATTACH_NS_OFFSET) = Clock.RealtimeNs();
        }

        /// <summary>Copies data into a free slot and publishes it; the sequence number, or 0 when every slot is held.
        /// sourceNs: e.g. the capture time (-1: now); sourceSeq: the input message it was computed from (0: none).</summary>
        public ulong Publish(byte[] data, long sourceNs = -1, ulong sourceSeq = 0)
        {
            if ((ulong)data.Length > seg.Config.Capacity)
                throw new ArgumentException("cannot publish " + data.Length + " bytes: capacity is " + seg.Config.Capacity + " bytes");
            int found = -1;
            foreach (var s in order) if (seg.Lock((long)Layout.LOCK_SLOT0 + s, Native.F_WRLCK)) { found = (int)s; break; }
            if (found < 0) return 0;
            uint slot = (uint)found;
            byte* h = seg.Base + seg.SlotOffset(slot);
            ulong* state = (ulong*)(h + Layout.SLOT_STATE_OFFSET);
            System.Threading.Volatile.Write(ref *state, 2 * seq + 1);
            Marshal.Copy(data, 0, (IntPtr)seg.Payload(slot), data.Length);
            ulong next = ++seq;
            long now = Clock.RealtimeNs();
            *(ulong*)(h + Layout.SLOT_LENGTH_OFFSET) = (ulong)data.Length;
            *(long*)(h + Layout.SLOT_SOURCE_NS_OFFSET) = sourceNs < 0 ? now : sourceNs;
            *(long*)(h + Layout.SLOT_PUBLISH_NS_OFFSET) = now;
            *(ulong*)(h + Layout.SLOT_GENERATION_OFFSET) = generation;
            *(ulong*)(h + Layout.SLOT_SOURCE_SEQ_OFFSET) = sourceSeq;
            System.Threading.Volatile.Write(ref *state, 2 * next);
            seg.Unlock((long)Layout.LOCK_SLOT0 + slot);
            *(ulong*)(seg.Base + Layout.HEADER_LATEST_SEQ_OFFSET) = next;
            System.Threading.Volatile.Write(ref *seg.Wake, (uint)(((next & Layout.WAKE_SEQ_MASK) << (int)Layout.WAKE_SEQ_SHIFT) | slot));
            seg.FutexWake();
            order.Remove(slot);
            order.Add(slot);
            return next;
        }

        public void Dispose() => seg.Dispose();
    }
}
