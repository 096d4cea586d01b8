#!/usr/bin/python3
"""A persistent worker speaking Bazel's proto worker protocol (stdlib only).

Bazel starts it with --persistent_worker and writes WorkRequests to its stdin,
each preceded by its length as a varint; it answers each with a WorkResponse
the same way. The request's last argument is "@<params file>" (Bazel 4.2.3 expands it into the request's
arguments itself; run without a worker, the file is read here): they are
the output path, then the inputs to concatenate into it, then optionally
"--also-read <absolute path>" (a file the action did not declare) and
"--output-last" (open the output only at the end).
Only the proto fields the fixture needs are encoded: WorkRequest.arguments (1),
WorkResponse.exit_code (1), output (2), request_id (3).
"""
import os
import sys


def read_varint(stream):
    shift, value = 0, 0
    while True:
        byte = stream.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7


def varint(value):
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def fields(message):
    """Yields (field number, value) of a message's varint and bytes fields."""
    pos = 0
    while pos < len(message):
        key, pos = decode_varint(message, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = decode_varint(message, pos)
        elif wire == 2:
            size, pos = decode_varint(message, pos)
            value, pos = message[pos:pos + size], pos + size
        else:
            raise ValueError("unexpected wire type %d" % wire)
        yield number, value


def decode_varint(data, pos):
    shift, value = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def run(arguments):
    lines = arguments
    if arguments and arguments[-1].startswith("@"):
        with open(arguments[-1][1:]) as f:
            lines = arguments[:-1] + f.read().splitlines()
    out, rest = lines[0], lines[1:]
    extra = None
    output_first = "--output-last" not in rest
    rest = [a for a in rest if a != "--output-last"]
    if "--also-read" in rest:
        i = rest.index("--also-read")
        extra = rest[i + 1]
        rest = rest[:i] + rest[i + 2:]
    # The output is opened first and last (with other flags, so that the
    # monitor's kernel side reports both opens rather than counting the
    # second): a request's own output brackets everything it reads, which
    # is how the monitor tells the requests of one worker process apart.
    # With --output-last only at the end, as a compiler would.
    if output_first:
        open(out, "w").close()
    text = ""
    for path in rest:
        with open(path) as f:
            text += f.read()
    if extra:
        try:
            with open(extra) as f:
                text += f.read()
        except OSError as e:
            text += "could not read %s: %s\n" % (extra, e)
    with open(out, "a") as f:
        f.write(text)


def respond(request_id, code, output):
    body = b"\x08" + varint(code) if code else b""
    data = output.encode()
    body += b"\x12" + varint(len(data)) + data
    if request_id:
        body += b"\x18" + varint(request_id)
    sys.stdout.buffer.write(varint(len(body)) + body)
    sys.stdout.buffer.flush()


def serve():
    while True:
        size = read_varint(sys.stdin.buffer)
        if size is None:
            return
        message = sys.stdin.buffer.read(size)
        arguments, request_id = [], 0
        for number, value in fields(message):
            if number == 1:
                arguments.append(value.decode())
            elif number == 3:
                request_id = value
        try:
            run(arguments)
            respond(request_id, 0, "")
        except Exception as e:  # the action fails, the worker lives on
            respond(request_id, 1, "worker: %r (%s) in %s" % (e, getattr(e, "filename", ""), os.getcwd()))


if __name__ == "__main__":
    if "--persistent_worker" in sys.argv:
        serve()
    else:
        run(sys.argv[1:])
