"""A Python client generated today reads values that Kiln adds tomorrow.

Kiln's responses type their enums as open (`BuildStatusValue` is a `BuildStatus` or any
other string), so a status, driver or problem code added after a client was generated
reaches it as a plain string instead of failing validation. This reads a build and a
problem from a server that sends values the contract has never listed, and prints what
it read; run it as `scenario.py` is run, with KILN_URL pointing at such a server.
"""

from __future__ import annotations

import json
import os

from kiln_client import ApiClient, BuildsApi, BuildStatus, Configuration, Problem
from kiln_client.exceptions import NotFoundException
from scenario import MISSING_BUILD, value_of

BUILD = 1


def main() -> None:
    configuration = Configuration(
        host=os.environ["KILN_URL"],
        access_token=os.environ["KILN_TOKEN"],
        ssl_ca_cert=os.environ.get("KILN_CA_CERT"),
    )
    with ApiClient(configuration) as client:
        builds = BuildsApi(client)
        build = builds.get_build(BUILD)
        status = build.status.actual_instance
        if isinstance(status, BuildStatus):
            print(f"build {build.id} is {status.value}")
        else:  # a status added after this client was generated
            print(f'build {build.id} is "{status}", which this client does not know yet')
        read = {
            "status": value_of(build.status),
            "trigger": value_of(build.trigger),
            "driver": value_of(build.driver),
            "jobs": [value_of(job.status) for job in build.embedded.jobs],
        }
        try:
            builds.get_build(MISSING_BUILD)
        except NotFoundException as error:
            if isinstance(error.data, Problem):
                read["code"] = value_of(error.data.code)
    print(json.dumps(read))


if __name__ == "__main__":
    main()
