"""recon-dec: supervised Caffe nets augmented with reconstruction decoders
(Zhang, Lee & Lee, ICML 2016) and related unsupervised objectives."""

__version__ = "0.1.0"
