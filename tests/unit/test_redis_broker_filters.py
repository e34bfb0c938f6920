"""roles/redis_broker/filter_plugins/redis_broker.py, called directly: the lines of users.acl."""

import hashlib


def test_a_user_line_starts_from_nothing_and_holds_no_password(redis):
    line = redis.redis_broker_acl_user("celery", ["s3cret", ""], ["@connection", "-@admin", "get"],
                                       ["celery*"], ["*"])
    digest = hashlib.sha256(b"s3cret").hexdigest()
    assert line == ("user celery on #%s resetkeys ~celery* resetchannels &* -@all +@connection -@admin +get"
                    % digest)
    assert "s3cret" not in line


def test_a_former_password_is_kept_beside_the_new_one(redis):
    line = redis.redis_broker_acl_user("celery", ["new", "old"], ["get"])
    assert line.split()[3:5] == ["#" + hashlib.sha256(b"new").hexdigest(), "#" + hashlib.sha256(b"old").hexdigest()]


def test_a_user_without_keys_or_channels_reaches_none(redis):
    line = redis.redis_broker_acl_user("celery-exporter", ["p"], ["info"])
    assert "resetkeys resetchannels -@all +info" in line and "~" not in line and "&" not in line


def test_queues_come_from_each_worker_host_and_the_extras(redis):
    hostvars = {"w1": {"celery_worker_queue_names": ["hipri", "celery"]},
                "w2": {"celery_worker_queue_names": ["data"]}, "w3": {}}
    assert redis.redis_broker_queues(hostvars, ["w1", "w2"], ["celery", "reports"]) == [
        ["celery", "data", "hipri", "reports"], []]
    assert redis.redis_broker_queues(hostvars, ["w1", "w3"])[1] == ["w3"]
