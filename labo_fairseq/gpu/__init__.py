"""The GPU tools: the one-command GPU check (:mod:`.check`, its device tests :mod:`.device_checks`)
and the one-allocation job (:mod:`.allocation`)."""
