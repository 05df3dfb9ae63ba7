"""The fairseq plugin: the registered criteria, the checkpoint allow-list, fairseq's repairs.
Imported by :func:`labo_fairseq.register`."""
