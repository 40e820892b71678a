"""The server side of a run: fedsec's ServerApp and round loop, server-side evaluation, FLTrust's root update."""
