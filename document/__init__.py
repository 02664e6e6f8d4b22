"""The SSM Command document's sources (content.yaml, prefetch.sh) and their generator into template.yaml."""
