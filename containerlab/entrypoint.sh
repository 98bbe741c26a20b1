#!/bin/sh
# Start gobgpd, then the agent (both with the configs containerlab binds), and stay in the foreground.
set -eu
mkdir -p /run/netns
gobgpd -f /etc/gobgpd/gobgpd.toml --api-hosts 127.0.0.1:50051 --pprof-disable -r &
ipvlan-bgp validate /etc/ipvlan-bgp/agent.toml
exec ipvlan-bgp run /etc/ipvlan-bgp/agent.toml
