"""Datasets: image LMDBs of Caffe Datums (``store``, ``recon-dec data``) and
readers of the data sets we ship or install (``mnist``)."""
