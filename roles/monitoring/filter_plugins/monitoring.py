"""Filters of the monitoring role."""


def monitoring_target(hostvars):
    """{"host": inventory name, "address": where its exporters listen} for one host's hostvars."""
    name = hostvars["inventory_hostname"]
    address = (hostvars.get("monitoring_node_exporter_address")
               or ((hostvars.get("ansible_facts") or {}).get("default_ipv4") or {}).get("address") or name)
    return {"host": name, "address": address}


class FilterModule:
    def filters(self):
        return {"monitoring_target": monitoring_target}
