"""The encoder analysis and the graph builder, in Caffe's idiom
(``caffe_pb2`` LayerParameters): layer constructors with named, shareable
parameters; encoder passes over one set of weights; data layers, heads and
solvers. Methods (``recon_dec.methods``) build their nets from these."""
