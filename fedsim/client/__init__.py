"""The client side: fedsim's Flower ClientApp, the local training and evaluation
kernels (one client at a time, or a cohort vectorised with ``torch.func``), and the
staging of arrays between host and device."""
