"""The Caffe-facing layer: the one place that imports ``caffe_pb2``, reads
nets, solvers and caffemodels (legacy formats upgraded), computes blob shapes
with Caffe's formulas, parses Caffe's logs and finds Caffe's tools. Every
other module goes through it."""
