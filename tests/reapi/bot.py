"""A minimal Remote Workers API bot for the REAPI end-to-end test.

No bot ships in the reachable registries, so the test keeps this one. It uses
BuildGrid's own generated protos and gRPC stubs, takes one lease at a time,
materialises the action's input root below --work-dir, forks the command
there, uploads its outputs and reports the ActionResult on the lease.

Before it starts a command it writes a record for the monitor's node agent
(--records-dir, outside every input root): the action digest, the input root,
the declared outputs and Bazel's RequestMetadata, which the bot looks up on
the server's Operations service (Bazel sends it to the server, not to us).

Run it by its path (a `#!` line naming the interpreter is prepended by the
test), so that the agent's `attribution.worker_runners` matches it.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

import grpc
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from buildgrid._protos.google.devtools.remoteworkers.v1test2 import bots_pb2, bots_pb2_grpc
from buildgrid._protos.google.longrunning import operations_pb2, operations_pb2_grpc

REQUEST_METADATA = "build.bazel.remote.execution.v2.requestmetadata-bin"


def log(*args):
    print("bot:", *args, file=sys.stderr, flush=True)


def digest_of(data):
    return re.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


class Cas:
    def __init__(self, channel, instance):
        self.stub = re_grpc.ContentAddressableStorageStub(channel)
        self.instance = instance

    def read(self, digest):
        if digest.size_bytes == 0:
            return b""
        req = re.BatchReadBlobsRequest(instance_name=self.instance, digests=[digest])
        resp = self.stub.BatchReadBlobs(req)
        for r in resp.responses:
            if r.status.code != 0:
                raise RuntimeError(f"CAS read {digest.hash}: {r.status.message}")
            return r.data
        raise RuntimeError(f"CAS read {digest.hash}: no response")

    def write(self, blobs):
        reqs = [re.BatchUpdateBlobsRequest.Request(digest=digest_of(b), data=b) for b in blobs]
        if not reqs:
            return
        resp = self.stub.BatchUpdateBlobs(
            re.BatchUpdateBlobsRequest(instance_name=self.instance, requests=reqs))
        for r in resp.responses:
            if r.status.code != 0:
                raise RuntimeError(f"CAS write {r.digest.hash}: {r.status.message}")

    def materialise(self, digest, path):
        """Writes the Directory `digest` at `path` (files, dirs, symlinks)."""
        directory = re.Directory()
        directory.ParseFromString(self.read(digest))
        os.makedirs(path, exist_ok=True)
        for f in directory.files:
            target = os.path.join(path, f.name)
            with open(target, "wb") as out:
                out.write(self.read(f.digest))
            os.chmod(target, 0o755 if f.is_executable else 0o644)
        for s in directory.symlinks:
            os.symlink(s.target, os.path.join(path, s.name))
        for d in directory.directories:
            self.materialise(d.digest, os.path.join(path, d.name))


def request_metadata(channel, instance, action_digest):
    """Bazel's RequestMetadata for the operation running this action, from the
    server's Operations service (BuildGrid returns it as trailing metadata)."""
    stub = operations_pb2_grpc.OperationsStub(channel)
    try:
        listed = stub.ListOperations(operations_pb2.ListOperationsRequest(
            name=instance,
            filter=f"action_digest = {action_digest.hash}/{action_digest.size_bytes}"))
        for op in listed.operations:
            _, call = stub.GetOperation.with_call(operations_pb2.GetOperationRequest(name=op.name))
            for key, value in call.trailing_metadata() or ():
                if key == REQUEST_METADATA:
                    md = re.RequestMetadata()
                    md.ParseFromString(value)
                    return md
    except grpc.RpcError as error:
        log("no request metadata:", error.code(), error.details())
    return None


def write_record(records_dir, record):
    name = os.path.basename(record["input_root"]) + ".json"
    tmp = os.path.join(records_dir, "." + name + ".tmp")
    with open(tmp, "w") as out:
        json.dump(record, out)
    os.rename(tmp, os.path.join(records_dir, name))


def run_action(args, channel, cas, lease, number):
    action = re.Action()
    if lease.payload.Is(re.Action.DESCRIPTOR):
        lease.payload.Unpack(action)
        action_digest = digest_of(action.SerializeToString())
    else:
        action_digest = re.Digest()
        lease.payload.Unpack(action_digest)
        action.ParseFromString(cas.read(action_digest))
    command = re.Command()
    command.ParseFromString(cas.read(action.command_digest))

    root = os.path.join(args.work_dir, f"action-{number}")
    cas.materialise(action.input_root_digest, root)
    outputs = list(command.output_files) + list(command.output_directories) + list(command.output_paths)
    for out in outputs:
        os.makedirs(os.path.dirname(os.path.join(root, out)), exist_ok=True)
    for out in command.output_directories:
        os.makedirs(os.path.join(root, out), exist_ok=True)

    md = request_metadata(channel, args.instance, action_digest)
    if args.records_dir:
        write_record(args.records_dir, {
            "input_root": root,
            "action_digest": f"{action_digest.hash}/{action_digest.size_bytes}",
            "output_files": list(command.output_files) + list(command.output_paths),
            "output_directories": list(command.output_directories),
            "target_id": md.target_id if md else None,
            "action_mnemonic": md.action_mnemonic if md else None,
            "tool_invocation_id": md.tool_invocation_id if md else None,
        })

    env = {v.name: v.value for v in command.environment_variables}
    cwd = os.path.join(root, command.working_directory)
    log("running", action_digest.hash, list(command.arguments))
    proc = subprocess.run(list(command.arguments), cwd=cwd, env=env, capture_output=True)
    log("exit", proc.returncode)

    result = re.ActionResult(exit_code=proc.returncode)
    blobs = [proc.stdout, proc.stderr]
    result.stdout_digest.CopyFrom(digest_of(proc.stdout))
    result.stderr_digest.CopyFrom(digest_of(proc.stderr))
    for out in list(command.output_files) + list(command.output_paths):
        path = os.path.join(cwd, out)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                data = f.read()
            blobs.append(data)
            result.output_files.add(path=out, digest=digest_of(data),
                                    is_executable=os.access(path, os.X_OK))
    cas.write(blobs)
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--instance", default="main")
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--records-dir")
    parser.add_argument("--bot-id", default="monitor-test-bot")
    args = parser.parse_args()

    channel = grpc.insecure_channel(args.server)
    bots = bots_pb2_grpc.BotsStub(channel)
    cas = Cas(channel, args.instance)
    # BuildGrid answers CreateBotSession once it has work for the bot (or
    # its long poll ends): the session exists before the answer comes.
    log("started", args.bot_id)
    session = bots.CreateBotSession(bots_pb2.CreateBotSessionRequest(
        parent=args.instance,
        bot_session=bots_pb2.BotSession(bot_id=args.bot_id, status=bots_pb2.BotStatus.OK)))
    log("session", session.name)
    done = set()
    number = 0
    while True:
        session = bots.UpdateBotSession(bots_pb2.UpdateBotSessionRequest(
            name=session.name, bot_session=session))
        for lease in session.leases:
            if lease.state != bots_pb2.LeaseState.ACTIVE or lease.id in done:
                continue
            number += 1
            try:
                result = run_action(args, channel, cas, lease, number)
                lease.result.Pack(result)
                lease.status.code = 0
            except Exception as error:  # report, keep serving
                log("lease failed:", repr(error))
                lease.status.code = 13  # INTERNAL
                lease.status.message = repr(error)
            lease.state = bots_pb2.LeaseState.COMPLETED
            done.add(lease.id)
        if not session.leases:
            time.sleep(0.1)


if __name__ == "__main__":
    main()
