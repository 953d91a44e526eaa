"""The engine: what executes runs (replay, leases, the step machinery, the policy stack
around calls, the worker). Internal: its names are used by :mod:`stalwart`'s public
modules, which re-export what users see; docs/design.md draws its parts and arrows."""
