"""Service-layer entry points kept under the names the product's documentation gives."""
