// CheckedIO read TOPIC [IDLE_MS] | write TOPIC COUNT [RATE_HZ] | latency TOPIC [IDLE_MS]: the
// cross-language test and benchmark peer, the C# twin of checked_io.cpp.
using System;
using ShmLaunch;

static unsafe class CheckedIO
{
    static int Main(string[] args)
    {
        if (args.Length < 2) { Console.Error.WriteLine("usage: CheckedIO.exe read TOPIC [IDLE_MS] | write TOPIC COUNT [RATE_HZ]"); return 2; }
        try
        {
            if (args[0] == "read")
            {
                int idle = args.Length > 2 ? int.Parse(args[2]) : 2000;
                using (var r = new Reader(args[1]))
                {
                    Console.WriteLine("ready");
                    Console.Out.Flush();
                    long received = 0, torn = 0, disorder = 0, last = -1;
                    Sample s;
                    while ((s = r.Receive(idle)) != null)
                        using (s)
                        {
                            ulong seq = *(ulong*)s.Data;
                            byte b = (byte)(seq % 251);
                            bool ok = s.Length >= 8;
                            for (int i = 8; ok && i < s.Length; i++) ok = s.Data[i] == b;
                            if (!ok) torn++;
                            else if ((long)seq <= last) disorder++;
                            else last = (long)seq;
                            received++;
                        }
                    Console.WriteLine("received " + received + " torn " + torn + " disorder " + disorder + " last " + last);
                }
            }
            else if (args[0] == "latency")
            {
                int idle = args.Length > 2 ? int.Parse(args[2]) : 2000;
                using (var r = new Reader(args[1]))
                {
                    Console.WriteLine("ready");
                    Console.Out.Flush();
                    var us = new System.Collections.Generic.List<double>();
                    Sample s;
                    while ((s = r.Receive(idle)) != null)
                        using (s) us.Add((Clock.RealtimeNs() - s.SourceNs) / 1e3);
                    us.Sort();
                    Func<double, double> pct = q => us.Count == 0 ? 0 : us[(int)(q * (us.Count - 1))];
                    Console.WriteLine(string.Format(System.Globalization.CultureInfo.InvariantCulture, "received {0} p50 {1:F1} p90 {2:F1} p99 {3:F1}",
                        us.Count, pct(0.5), pct(0.9), pct(0.99)));
                }
            }
            else if (args[0] == "write" && args.Length > 2)
            {
                long count = long.Parse(args[2]);
                double rate = args.Length > 3 ? double.Parse(args[3], System.Globalization.CultureInfo.InvariantCulture) : 0;
                using (var w = new Writer(args[1]))
                {
                    var msg = new byte[w.Config.Capacity];
                    for (long i = 0; i < count; i++)
                    {
                        BitConverter.GetBytes((ulong)i).CopyTo(msg, 0);
                        for (int k = 8; k < msg.Length; k++) msg[k] = (byte)(i % 251);
                        w.Publish(msg, -1, 1000 + (ulong)i);  // sourceSeq: a made-up input sequence, checked by the tests
                        if (rate > 0) System.Threading.Thread.Sleep(TimeSpan.FromTicks((long)(1e7 / rate)));
                    }
                    Console.WriteLine("wrote " + count);
                }
            }
            else { Console.Error.WriteLine("CheckedIO: unknown mode " + args[0]); return 2; }
        }
        catch (ShmError e) { Console.Error.WriteLine("CheckedIO: error: " + e.GetType().Name + ": " + e.Message); return 2; }
        return 0;
    }
}
