"""Per-vertebra analysis of a spine mask: instances, level names, measurements, outputs. No torch."""
