"""The study: configs and run layout (:mod:`.protocol`), the commands that prepare, train, evaluate,
tabulate, compare, tune and sweep, distillation runs, and the analyses."""
