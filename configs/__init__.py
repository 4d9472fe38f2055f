"""Packaged job configs: `--config NAME` with a bare name loads NAME.yaml from here."""
