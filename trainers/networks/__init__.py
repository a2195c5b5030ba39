"""Networks of nnzoo's methods, as plain ``torch.nn.Module`` s (one code path for 2D and 3D)."""
