"""Who is an admin: root, or a member of the configured admin group (by the user's
supplementary groups, as the node's user database knows them)."""

from __future__ import annotations

import grp
import os
import pwd


def is_admin(uid: int | None, gid: int | None, admin_group: str) -> bool:
    if uid == 0:
        return True
    if not admin_group or uid is None:
        return False
    try:
        user = pwd.getpwuid(uid).pw_name
        return grp.getgrnam(admin_group).gr_gid in os.getgrouplist(user, gid or 0)
    except KeyError:  # unknown user or group: not an admin
        return False
