import asyncio, cProfile, ipaddress, pstats, sys, time
root = sys.argv[3]; sys.path.insert(0, root)
from agent.config import parse_config
from agent.daemon import running
from agent.endpoints import Endpoint, IpvlanMode
from agent.model import LargeCommunity
from tests.fakes import FakeDiscovery, FakeGobgp
N, K = int(sys.argv[1]), int(sys.argv[2]); per = N // K

def ns(k, extra=0):
    return tuple(Endpoint(f"/run/netns/c{k}", "eth0", 2 + i, IpvlanMode.L3, "eth0",
                 (ipaddress.ip_interface(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}/32"),), True)
                 for i in range(per + extra) for n in [k * per + i + (200000 if i >= per else 0)])

class Groups(FakeDiscovery):
    def __init__(self, groups):
        super().__init__(); self.groups = groups
    def by_namespace(self): return self.groups

async def main():
    groups = {f"/run/netns/c{k}": ns(k) for k in range(K)}
    disc = Groups(groups); fake = FakeGobgp(LargeCommunity(65001, 4242, 1), batch=1000)
    cfg = parse_config({"uplinks": ["eth0"], "ownership_community": "65001:4242:1",
        "networks": [{"prefix": "10.0.0.0/9", "advertise": "both"}], "status": {"socket": "/tmp/perf/x.sock"},
        "metrics": {"listen": ""}, "max_prefixes": 100000, "timers": {"settle": 0.0}, "dampening": {"enabled": False}})
    disc.synced.set()
    async with running(cfg, speaker=fake, discovery=disc) as daemon:
        r = 100; pr = cProfile.Profile()
        base = daemon.reconciler.stats.passes
        t = time.perf_counter(); pr.enable()
        for j in range(r):
            want = base + j + 1
            groups = dict(groups); groups["/run/netns/c0"] = ns(0, extra=1 + j % 2); disc.groups = groups
            disc._notify()
            while daemon.reconciler.stats.passes < want: await asyncio.sleep(0)
        pr.disable()
        print(f"daemon pass per change, {N} endpoints / {K} ns: {(time.perf_counter()-t)/r*1000:.2f} ms; rib {len(fake.rib)}")
        pstats.Stats(pr).sort_stats("tottime").print_stats(12)
asyncio.run(main())
