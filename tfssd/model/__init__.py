"""The SSD network: backbones, extra layers, heads, weight loading and freezing."""
