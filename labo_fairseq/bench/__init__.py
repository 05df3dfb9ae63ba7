"""Benchmarks (commands, never timed tests): the criteria against fairseq's LS (:mod:`.criteria`),
and the chunked output-layer loss at large vocabularies (:mod:`.vocab`)."""
