#!/usr/bin/env bash
# Deploy the reference rack with containerlab + Docker, check the ToR's routes, ping every container, destroy.
# Needs: containerlab, Docker. Without them, `make demo` runs the same topology on network namespaces.
set -euo pipefail
cd "$(dirname "$0")"
topo=rack.clab.yml
docker build -f Dockerfile -t ipvlan-bgp-agent:latest ..
trap 'containerlab destroy -t "$topo" --cleanup' EXIT
containerlab deploy -t "$topo" --reconfigure
lab=clab-ipvlan-bgp-rack
containers="10.1.100.11 10.1.100.12 10.3.0.11 10.2.100.21 10.3.0.21"
echo "waiting for the ToR to learn every container..."
for _ in $(seq 120); do
  table=$(docker exec "$lab-tor" vtysh -c 'show ip bgp json')
  missing=0
  for ip in $containers; do grep -q "\"$ip/32\"" <<<"$table" || missing=1; done
  [ $missing = 0 ] && break
  sleep 1
done
docker exec "$lab-tor" vtysh -c 'show ip bgp'
docker exec "$lab-tor" ip route
for ip in $containers; do docker exec "$lab-client" ping -c 1 -W 2 "$ip" >/dev/null && echo "ping $ip: ok"; done
docker exec "$lab-host1" ipvlan-bgp plan /etc/ipvlan-bgp/agent.toml
docker exec "$lab-host1" gobgp global rib -a ipv4
