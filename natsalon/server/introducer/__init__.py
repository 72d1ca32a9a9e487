"""The introducer: the salon's JOIN handler (:mod:`.handler`), its
return-routability cookies (:mod:`.cookies`) and the room registry
(:mod:`.rooms`)."""
