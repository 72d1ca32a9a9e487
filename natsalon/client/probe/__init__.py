"""The NAT prober: measurement (:mod:`.measure`) and the pure verdict tables
(:mod:`.classify`)."""
