"""The routes to the CKKS secret key that code in the server's own process can try, and what each one yields.

The curious server of ``attack.kind = "collude_with_server"`` (:mod:`.collusion`) tries them on the victim's
ciphertext in the first round it sees one; ``summary.json``'s ``collusion.routes`` records, per route, what it
found and whether it decrypted the victim's update alone (the hook measures the error). These are the routes found
when fedsec was attacked from the server's process (docs/encryption.md, "Trust model"):

- ``ray_named_actor``: a Ray cluster the server's process is connected to, and a named actor holding the key (the
  key authority: ``ray.util.list_named_actors(all_namespaces=True)``, then its ``_decrypt``).
- ``objects_in_process``: objects in the server's process (``gc``) that hold the secret key or lead to it: a
  TenSEAL context with its secret key, the clients' key directory handle (under Flower's simulation engine the
  ClientApp, and with it the clients' spec, lives in the driver).
- ``key_files``: the clients' key files on this machine's disk, readable by the operating-system account the
  server runs as (``fedsec-client-keys-*`` in the temporary directory; under threshold CKKS,
  ``fedsec-threshold-keys-*``: every committee member's share file, whose partial decryptions fused decrypt
  anything).

Each route returns what it found and the victim's decrypted vector (None when it found no key). Not tried: reading
another process's memory through ``/proc`` or ``ptrace``, which the same account can do too on most systems.
"""

from __future__ import annotations

import gc
import glob
import os
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fedsec.crypto.client_keys import ClientKeyDir

Candidate = tuple[str, np.ndarray]  # (what a route found, the victim's ciphertext decrypted with it)
Route = Callable[[list[bytes], int], tuple[str, list[Candidate]]]


def _ray_named_actor(chunks: list[bytes], length: int) -> tuple[str, list[Candidate]]:
    try:
        import ray
    except ImportError:
        return "Ray is not installed", []
    if not ray.is_initialized():
        return "the server's process is not connected to Ray", []
    actors = [a for a in ray.util.list_named_actors(all_namespaces=True) if "key-authority" in a["name"]]
    found = []
    for a in actors:
        actor = ray.get_actor(a["name"], namespace=a["namespace"])
        vector = ray.get(actor._decrypt.remote(chunks, length))
        found.append((f"named actor {a['name']!r}: called its _decrypt", vector))
    return (f"{len(actors)} named actor(s) holding a key" if actors else "no named actor holds a key"), found


def _objects_in_process(chunks: list[bytes], length: int) -> tuple[str, list[Candidate]]:
    import tenseal as ts

    from fedsec.crypto import decrypt_chunks
    from fedsec.crypto.client_keys import ClientKeyDir
    from fedsec.crypto.threshold import ThresholdKeyDir

    found: list[Candidate] = []
    for obj in gc.get_objects():
        try:
            if isinstance(obj, ts.Context) and obj.has_secret_key():
                found.append(("a TenSEAL context holding the secret key", decrypt_chunks(obj, chunks, length)))
            elif isinstance(obj, ClientKeyDir) and os.path.isdir(obj.path):  # threshold's too: a subclass
                what = ("the committee's key directory handle ({}): every member's share"
                        if isinstance(obj, ThresholdKeyDir) else "the clients' key directory handle ({})")
                found.append((what.format(obj.path), _decrypt_with(obj, chunks, length)))
        except Exception:  # noqa: BLE001 - another key's object: it does not decrypt this ciphertext
            continue
    return (f"{len(found)} object(s) holding or naming a key" if found else "no object holding or naming a key"), found


def _key_files(chunks: list[bytes], length: int) -> tuple[str, list[Candidate]]:
    from fedsec.crypto.client_keys import GROUP_FILE, ClientKeyDir
    from fedsec.crypto.threshold import ThresholdKeyDir

    found: list[Candidate] = []
    kinds = (("fedsec-client-keys-", ClientKeyDir, "readable key file {} (same operating-system account)"),
             ("fedsec-threshold-keys-", ThresholdKeyDir,
              "readable committee share files beside {} (same operating-system account)"))
    for prefix, kind, what in kinds:
        for path in sorted(glob.glob(os.path.join(tempfile.gettempdir(), f"{prefix}*", GROUP_FILE))):
            if os.access(path, os.R_OK):
                try:
                    vector = _decrypt_with(kind(os.path.dirname(path)), chunks, length)
                except Exception:  # noqa: BLE001 - unreadable, malformed or another run's: not this key
                    continue
                found.append((what.format(path), vector))
    return (f"{len(found)} readable key file(s)" if found else "no readable key file"), found


def _decrypt_with(keys: ClientKeyDir, chunks: list[bytes], length: int) -> np.ndarray:
    """What whoever reads a key directory decrypts: with the clients' shared key, the ciphertext itself; under
    threshold CKKS, every committee member's partial decryption made from its share file, fused (raises when a
    file is unreadable)."""
    from fedsec.crypto.openfhe_side import side
    from fedsec.crypto.threshold import ThresholdKeyDir

    if not isinstance(keys, ThresholdKeyDir):
        return keys.decryptor(set())._decrypt(chunks, length)
    info = keys.info()
    partials = [side().call("partial", cc=info.cc, members=[chunks], secret_path=str(keys.secret_path(pid)),
                            lead=i == 0) for i, pid in enumerate(info.config.committee)]
    return np.frombuffer(side().call("fuse", cc=info.cc, partials=partials, length=length), dtype=np.float64)


ROUTES: dict[str, Route] = {"ray_named_actor": _ray_named_actor, "objects_in_process": _objects_in_process,
                            "key_files": _key_files}


def try_routes(chunks: list[bytes], length: int) -> dict[str, tuple[str, list[Candidate]]]:
    """Every route on one ciphertext: name -> (what it found, candidates: each key it reached and the ciphertext
    decrypted with it; another run's key decrypts to noise, which the caller's error measure shows); a route that
    raises reports the error."""
    out: dict[str, tuple[str, list[Candidate]]] = {}
    for name, route in ROUTES.items():
        try:
            out[name] = route(chunks, length)
        except Exception as e:  # noqa: BLE001 - a route that fails yields nothing; say why
            out[name] = (f"failed: {type(e).__name__}: {e}", [])
    return out
