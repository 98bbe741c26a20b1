"""ipvlan-bgp-agent: advertise ipvlan L3/L3S container addresses to the ToR through a local GoBGP.

Data flow: netlink (discovery) -> endpoints -> desired routes -> plan (diff) -> GoBGP.
"""

__version__ = "0.1.0"
