"""Data: tokenise, pack, label; bundled sets (KJV, Fashion-MNIST); chat records."""
