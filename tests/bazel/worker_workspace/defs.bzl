"""concat: concatenates srcs into <name>.out in a persistent worker."""

def _concat_impl(ctx):
    out = ctx.actions.declare_file(ctx.label.name + ".out")
    args = ctx.actions.args()
    args.add(out)
    args.add_all(ctx.files.srcs)
    if ctx.attr.also_read:
        # The path comes from --define=MONITOR_FIXTURE_UNDECLARED=<abs path>.
        args.add("--also-read", ctx.var.get("MONITOR_FIXTURE_UNDECLARED", "/nonexistent"))
    if ctx.attr.output_last:
        args.add("--output-last")
    args.use_param_file("@%s", use_always = True)
    args.set_param_file_format("multiline")
    ctx.actions.run(
        executable = ctx.executable._worker,
        arguments = [args],
        inputs = ctx.files.srcs,
        outputs = [out],
        mnemonic = "FixtureConcat",
        progress_message = "Concatenating %s" % ctx.label,
        execution_requirements = {"supports-workers": "1"},
    )
    return [DefaultInfo(files = depset([out]))]

concat = rule(
    implementation = _concat_impl,
    attrs = {
        "srcs": attr.label_list(allow_files = True),
        # Also read a file it does not declare (by absolute path).
        "also_read": attr.bool(),
        # Open the output only at the end (as compilers do), not first too.
        "output_last": attr.bool(),
        "_worker": attr.label(
            default = "//tools:worker.py",
            executable = True,
            allow_single_file = True,
            cfg = "host",
        ),
    },
)
