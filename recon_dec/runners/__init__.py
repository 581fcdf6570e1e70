"""Plans and their runners: ``generate`` turns a method's variants into
files and plan.json, ``plan`` reads and resolves plans, ``train`` runs their
stages with ``caffe train``, ``evaluate`` measures classifiers."""
