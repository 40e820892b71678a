"""Honest and malicious Flower clients; importable as ``fedsec.clients``.

``make_client_app(ClientSpec.from_plan(plan, ...))`` builds fedsec's ClientApp; the spec (:mod:`.spec`) carries
the pieces of the run plan a client needs. Attacks live one a file in :mod:`.attacks`.
"""
