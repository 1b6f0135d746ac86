"""Mint a chanrelay ref pair without calling the relay (Python 3 standard library only).

The relay must share `secret` (its `signing_secret`). With `node_id`, the channel lives on
that relay of a fleet (the balancer routes `<node_id>~…` to it).
"""
import base64, hashlib, hmac, time, uuid


def _key(secret: str, channel_id: str, direction: str, expiry: int) -> str:
    msg = f"{channel_id}.{direction}.{expiry}".encode()
    sig = hmac.new(secret.encode(), msg, hashlib.sha256).digest()
    return f"s2.{expiry}." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()


def mint_ref(secret, channel_id=None, ttl_s=300, node_id=None, expiry=None):
    cid = channel_id or str(uuid.uuid4())
    if node_id:
        cid = f"{node_id}~{cid}"
    exp = expiry if expiry is not None else int(time.time()) + ttl_s
    ref = lambda d: {"channel_id": cid, "access_key": _key(secret, cid, d, exp), "direction": d}
    return {"channel_id": cid, "writer": ref("write"), "reader": ref("read"), "expires_at": exp}
