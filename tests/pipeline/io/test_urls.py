"""Storage options and error messages: parsed strictly, and never a credential in a log line or message."""

import pytest

from isovol.pipeline.errors import InputError
from isovol.pipeline.io.urls import (
    describe_error,
    filesystem,
    is_local,
    local_path,
    parse_storage_options,
    redact_options,
    strip_url,
)

SECRETS = ["AKIAEXAMPLEKEY123", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLE", "tok-abc.def", "hunter2", "sess-999"]
CREDENTIALS = "access denied (check the credentials in the storage options or the environment)"


def test_redact_options_hides_secret_like_keys_at_any_depth():
    """Guards against credentials reaching logs, the run record or the output's provenance metadata."""
    options = {
        "key": SECRETS[0], "secret": SECRETS[1], "token": SECRETS[2], "anon": False,
        "endpoint_url": "https://s3.example.org",
        "client_kwargs": {"region_name": "eu-west-1", "aws_session_token": SECRETS[4]},
        "config_kwargs": {"s3": {"Password": SECRETS[3], "addressing_style": "path"}},
        "AWS_SECRET_ACCESS_KEY": SECRETS[1], "credentials_file": "/home/u/.aws/credentials",
    }
    red = redact_options(options)
    assert not any(s in repr(red) for s in SECRETS)
    assert red["anon"] is False and red["endpoint_url"] == "https://s3.example.org"
    assert red["client_kwargs"]["region_name"] == "eu-west-1"
    assert red["config_kwargs"]["s3"]["addressing_style"] == "path"
    assert red["key"] == red["secret"] == red["token"] == red["AWS_SECRET_ACCESS_KEY"] == "***"
    assert options["key"] == SECRETS[0]  # the caller's dict is not modified


def test_parse_storage_options():
    """Guards against accepting non-object JSON or echoing secret-bearing text in the error."""
    assert parse_storage_options(None) == {} and parse_storage_options("") == {}
    assert parse_storage_options('{"anon": true, "client_kwargs": {"a": 1}}') == {"anon": True,
                                                                                  "client_kwargs": {"a": 1}}
    with pytest.raises(InputError, match="not valid JSON") as info:
        parse_storage_options('{"secret": "hunter2",}')
    assert "hunter2" not in str(info.value)
    for bad in ('["hunter2"]', '"hunter2"', "3"):
        with pytest.raises(InputError, match="must be a JSON object") as info:
            parse_storage_options(bad)
        assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("exc", [
    PermissionError(13, "Permission denied", "/data/vol.zarr"),
    PermissionError("hunter2"),
    OSError("An error occurred (AccessDenied) when calling the GetObject operation: Access Denied"),
    RuntimeError("AccessDenied: key AKIAEXAMPLEKEY123 is not allowed"),
    OSError("An error occurred (InvalidAccessKeyId) when calling the ListObjectsV2 operation"),
    OSError("SignatureDoesNotMatch: secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLE"),
    OSError("403 Forbidden"),
    ValueError("Unable to locate credentials"),
])
def test_access_errors_become_the_credentials_message(exc):
    """Guards against a raw botocore/OS error (possibly quoting keys) instead of an actionable line."""
    assert describe_error(exc) == CREDENTIALS


@pytest.mark.parametrize("text", [
    "request failed: secret=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLE, retrying",
    "invalid token: tok-abc.def",
    "password='hunter2' rejected",
    "Password: hunter2",
    "aws_session_token=sess-999;expired",
    "Cannot connect to https://alice:hunter2@storage.example.org/bucket",
])
def test_other_errors_never_include_secret_values(text):
    """Guards against an exception text that quotes a credential being printed to the user or the logs."""
    msg = describe_error(RuntimeError(text + "\nsecond line AKIAEXAMPLEKEY123"))
    assert not any(s in msg for s in SECRETS), msg
    assert "\n" not in msg


def test_describe_error_keeps_useful_reasons():
    """Guards against redaction swallowing the reason a user needs (not found, the first line of the error)."""
    assert describe_error(FileNotFoundError("no such file: /x")) == "not found"
    assert describe_error(OSError("NoSuchBucket: the bucket does not exist")) == "not found"
    assert describe_error(ValueError("unsupported compressor lz77\nmore")) == "unsupported compressor lz77"
    assert describe_error(KeyError()) == "KeyError"


def test_locations():
    """Guards against treating file:// as remote, or keeping user:password in displayed URLs."""
    assert is_local("/data/x.zarr") and is_local("rel/x.zarr") and is_local("file:///data/x.zarr")
    assert not is_local("s3://bucket/x.zarr") and not is_local("memory://x")
    assert local_path("file:///data/x.zarr") == "/data/x.zarr"
    assert strip_url("https://alice:hunter2@host/data/") == "https://host/data"
    assert strip_url("s3://bucket/x.zarr/") == "s3://bucket/x.zarr"
    fs, path = filesystem("memory://some/where")
    assert fs.protocol[0] == "memory" or "memory" in fs.protocol
    with pytest.raises(InputError, match="cannot open nosuchproto://x"):
        filesystem("nosuchproto://x")


def test_every_storage_option_value_is_masked_in_error_messages():
    """A secret pasted into endpoint_url (or any option) was echoed verbatim: "Invalid endpoint: wJal..."."""
    pasted = "wJalrXUtnFEMI-pasted-into-endpoint"
    options = {"key": "AKIAMASKTEST1", "endpoint_url": pasted,
               "client_kwargs": {"endpoint_url": "http://alice:s3cr3t-pw@127.0.0.1:9000"},
               "config_kwargs": {"user_agent_extra": ["tok-in-a-list-42"]}, "anon": False}
    text = describe_error(ValueError(f"Invalid endpoint: {pasted}"), options)
    assert text == "Invalid endpoint: ***"
    from isovol.pipeline.io.urls import mask_secrets

    masked = mask_secrets("a AKIAMASKTEST1 b http://alice:s3cr3t-pw@127.0.0.1:9000/x c alice:s3cr3t-pw d "
                          "s3cr3t-pw e tok-in-a-list-42")
    assert masked == "a *** b ***/x c *** d *** e ***", masked  # an endpoint with credentials: whole


def test_a_plain_endpoint_stays_readable():
    """scheme://host:port holds nothing secret and is what a user needs to see in a connection error."""
    from isovol.pipeline.io.urls import mask_secrets, remember_secrets

    remember_secrets({"endpoint_url": "http://127.0.0.1:9123", "region_name": "us"})
    assert mask_secrets('Could not connect to "http://127.0.0.1:9123/b/k" (us)') == \
        'Could not connect to "http://127.0.0.1:9123/b/k" (us)'


def test_log_records_are_masked_by_the_filter():
    import logging

    from isovol.pipeline.io.urls import MaskSecrets, remember_secrets

    remember_secrets({"secret": "log-secret-value-77"})
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed with %s", ("log-secret-value-77!",), None)
    assert MaskSecrets().filter(record) and record.getMessage() == "failed with ***!"
