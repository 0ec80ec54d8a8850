"""The platform's published Python client (PyPI `dolbyio-rest-apis`), unchanged
but for its base URL, driving `api serve`: the content owner's token workflow.

Environment: PLATFORM_BASE_URL (e.g. http://127.0.0.1:8090), PLATFORM_API_SECRET.
Prints one JSON object with what the client saw; the Rust test
(api/tests/platform_client.rs) checks it against the server's own state.
"""

import asyncio
import json
import os

import dolbyio_rest_apis.streaming.publish_token as publish_token
import dolbyio_rest_apis.streaming.subscribe_token as subscribe_token
from dolbyio_rest_apis.core.http_request_error import HttpRequestError
from dolbyio_rest_apis.streaming.models.publish_token import CreatePublishToken, PublishTokenRestream, TokenStreamName, UpdatePublishToken
from dolbyio_rest_apis.streaming.models.subscribe_token import CreateSubscribeToken, UpdateSubscribeToken

BASE = os.environ["PLATFORM_BASE_URL"]
SECRET = os.environ["PLATFORM_API_SECRET"]

# the only change: the base URL (the client's modules import get_rts_url by name)
for module in (subscribe_token, publish_token):
    module.get_rts_url = lambda: BASE


async def main():
    out = {}
    # the syndication guide: one master token per partner, with its tracking id, region "Auto"
    create = CreateSubscribeToken("partner acme")
    create.streams = [TokenStreamName("live"), TokenStreamName("live-[0-9]+", True)]
    create.tracking_id = "acme"
    create.origin_cluster = "Auto"
    create.allowed_countries = ["FR", "DE"]
    create.bind_ips_on_usage = 3
    create.expires_on = "2030-01-01T00:00:00Z"
    acme = await subscribe_token.create(SECRET, create)
    out["created"] = {"id": acme.id, "token": acme.token, "tracking": acme.tracking.tracking_id, "originCluster": acme.origin_cluster,
                      "allowedCountries": acme.allowed_countries, "bindIpsOnUsage": acme.bind_ips_on_usage, "expiresOn": acme.expires_on,
                      "streams": [[s.stream_name, s.is_regex] for s in acme.streams]}
    other = CreateSubscribeToken("partner globex")
    other.streams = [TokenStreamName("live")]
    other.tracking_id = "globex"
    globex = await subscribe_token.create(SECRET, other)

    read = await subscribe_token.read(SECRET, acme.id)
    out["read_label"] = read.label

    # rotate the leaked master token, rename, change the streams
    update = UpdateSubscribeToken()
    update.refresh_token = True
    update.label = "partner acme (rotated)"
    update.add_token_streams = [TokenStreamName("backup")]
    update.remove_token_streams = [TokenStreamName("live-[0-9]+", True)]
    update.update_denied_countries = ["US"]
    rotated = await subscribe_token.update(SECRET, acme.id, update)
    out["rotated"] = {"token": rotated.token, "label": rotated.label, "tracking": rotated.tracking.tracking_id,
                      "streams": [[s.stream_name, s.is_regex] for s in rotated.streams], "deniedCountries": rotated.denied_countries}

    # paging, as the dashboard lists them
    page1 = await subscribe_token.list_tokens(SECRET, "Name", 1, 1, True)
    page2 = await subscribe_token.list_tokens(SECRET, "Name", 2, 1, True)
    page3 = await subscribe_token.list_tokens(SECRET, "Name", 3, 1, True)
    out["pages"] = [[t.label for t in p] for p in (page1, page2, page3)]

    # the owner's publish token, secure viewer
    pcreate = CreatePublishToken("owner")
    pcreate.streams = [TokenStreamName("live")]
    pcreate.subscribe_requires_auth = True
    pcreate.restream = [PublishTokenRestream("rtmp://restream.example/live", "stream-key-1")]
    ptoken = await publish_token.create(SECRET, pcreate)
    pupdate = UpdatePublishToken()
    pupdate.record = True
    pupdate.label = "owner (recording)"
    pupdated = await publish_token.update(SECRET, ptoken.id, pupdate)
    plist = await publish_token.list_tokens(SECRET, "AddedOn", 1, 10)
    out["publish"] = {"id": ptoken.id, "subscribeRequiresAuth": ptoken.subscribe_requires_auth, "record": pupdated.record,
                      "label": pupdated.label, "listed": [t.id for t in plist],
                      "restream": [[r.url, r.key] for r in ptoken.restream]}

    # delete, then reading it is a client error the client raises
    await subscribe_token.delete(SECRET, globex.id)
    try:
        await subscribe_token.read(SECRET, globex.id)
        out["read_deleted"] = "no error"
    except HttpRequestError as e:
        out["read_deleted"] = {"status": e.status_code, "reason": e.error_reason, "message": e.error_description}
    await publish_token.delete(SECRET, ptoken.id)
    print(json.dumps(out))


asyncio.run(main())
