"""Reports and experiments: Table 1 (``report``), training curves
(``plot``), the demo and its figures."""
