"""Networks shared by several parts of isovol (the FID Inception of the metrics). A method's own networks live in
its package under ``pipeline/methods/`` (docs/architecture.md)."""
