"""Files, processes, errors and provenance: what every command stands on. Standard library only;
knows nothing of fairseq, datasets or runs."""
