"""JSON on the wire (msgspec.json), one encoder and one decoder per message type."""

from typing import Any, TypeVar

import msgspec

from .events import AnyTaskEvent

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_decoders: dict[Any, msgspec.json.Decoder] = {}


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def decode(data: bytes, type_: type[T]) -> T:
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    return decoder.decode(data)


def decode_event(data: bytes) -> AnyTaskEvent:
    return decode(data, AnyTaskEvent)  # type: ignore[arg-type]
