"""Find messages of one type anywhere inside generated resources, looking inside Any fields."""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message


def unpack(packed: Message) -> Message:
    descriptor = descriptor_pool.Default().FindMessageTypeByName(packed.type_url.rpartition("/")[2])
    inner = message_factory.GetMessageClass(descriptor)()
    inner.ParseFromString(packed.value)
    return inner


def find(message: Message, full_name: str) -> Iterator[Message]:
    """Yield every message named `full_name` (e.g. `envoy.config.route.v3.Route`) in `message`."""
    if message.DESCRIPTOR.full_name == full_name:
        yield message
        return
    if message.DESCRIPTOR.full_name == "google.protobuf.Any":
        yield from find(unpack(message), full_name)
        return
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if field.message_type.GetOptions().map_entry:
            items = [value[key] for key in sorted(value)]
            values = [item for item in items if isinstance(item, Message)]
        elif field.is_repeated:
            values = list(value)
        else:
            values = [value]
        for item in values:
            yield from find(item, full_name)
