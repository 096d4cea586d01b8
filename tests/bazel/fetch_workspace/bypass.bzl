"""A repository rule that fetches with curl instead of repository_ctx.download:
Bazel's downloader config never sees the URL (bazelbuild/bazel#19402)."""

def _curl_fetch_impl(ctx):
    result = ctx.execute(["curl", "-sSf", "-o", "fetched.txt", ctx.attr.url])
    if result.return_code != 0:
        fail("curl failed: " + result.stderr)
    ctx.file("BUILD", "exports_files(['fetched.txt'])")

curl_fetch = repository_rule(
    implementation = _curl_fetch_impl,
    attrs = {"url": attr.string(mandatory = True)},
)
