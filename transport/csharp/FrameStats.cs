// FrameStats [--graph NAME] TOPIC [SECONDS]: the C# twin of the C++ frame_stats example. Once a second:
// messages per second and latency (source stamp to now). Runs as a `cmd:` node.
using System;
using System.Collections.Generic;
using ShmLaunch;

static class FrameStats
{
    static int Main(string[] args)
    {
        string dir = null;
        if (args.Length > 1 && args[0] == "--graph")  // attach to a running graph by its name
        {
            dir = Segment.GraphRuntimeDir(args[1]);
            var rest = new string[args.Length - 2];
            Array.Copy(args, 2, rest, 0, rest.Length);
            args = rest;
        }
        if (args.Length < 1) { Console.Error.WriteLine("usage: FrameStats.exe [--graph NAME] TOPIC [SECONDS]"); return 2; }
        double seconds = args.Length > 1 ? double.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : -1;
        bool stop = false;
        Console.CancelKeyPress += (s, e) => { e.Cancel = true; stop = true; };
        AppDomain.CurrentDomain.ProcessExit += (s, e) => stop = true;
        try
        {
            using (var reader = new Reader(args[0], dir))
            {
                Console.WriteLine("FrameStats: topic " + args[0] + ", capacity " + reader.Config.Capacity + ", pool " + reader.Config.Pool);
                long start = Clock.MonotonicMs(), tick = start;
                var latency = new List<double>();
                while (!stop && (seconds < 0 || Clock.MonotonicMs() - start < seconds * 1000))
                {
                    using (var s = reader.Receive(200))
                        if (s != null) latency.Add((Clock.RealtimeNs() - s.SourceNs) / 1e6);
                    long now = Clock.MonotonicMs();
                    if (now - tick >= 1000)
                    {
                        latency.Sort();
                        double p50 = latency.Count > 0 ? latency[latency.Count / 2] : 0;
                        Console.WriteLine(string.Format(System.Globalization.CultureInfo.InvariantCulture,
                            "{0:F1} msg/s, latency p50 {1:F3} ms, missed {2}, writer {3}", latency.Count * 1000.0 / (now - tick), p50,
                            reader.Missed, reader.WriterAlive ? "alive" : "gone"));
                        latency.Clear();
                        tick = now;
                    }
                }
            }
        }
        catch (ShmError e) { Console.Error.WriteLine("FrameStats: error: " + e.Message); return 2; }
        return 0;
    }
}
