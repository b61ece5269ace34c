//! Connections into a container that bypass the app proxy (SSH, an IDE on a published
//! port): the established TCP sockets in the container's network namespace, read from
//! `/proc/<pid>/net/tcp` and `tcp6` of its main process, whose local port is one of the
//! container's ports. The health monitor subtracts the proxy's own upstream connections
//! and reports what is left as activity with source `backend`.
//!
//! Works wherever the daemon can read the container's `/proc` entry: the same host, the
//! same or a parent PID namespace (a Docker or Podman engine on this machine).

/// `st` of an established socket in `/proc/net/tcp`.
const ESTABLISHED: &str = "01";

/// Established sockets in one `/proc/net/tcp`-format table whose local port is in `ports`.
pub fn count_established(table: &str, ports: &[u16]) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace();
            let (Some(_slot), Some(local), Some(_remote), Some(state)) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return false;
            };
            let port =
                local.rsplit_once(':').and_then(|(_, port)| u16::from_str_radix(port, 16).ok());
            state == ESTABLISHED && port.is_some_and(|port| ports.contains(&port))
        })
        .count()
}

/// Established connections to `ports` inside the network namespace of process `pid`.
pub async fn established(pid: u32, ports: &[u16]) -> Result<usize, String> {
    let mut total = 0;
    for table in ["tcp", "tcp6"] {
        let path = format!("/proc/{pid}/net/{table}");
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => total += count_established(&text, ports),
            // A kernel without IPv6 has no tcp6.
            Err(error) if table == "tcp6" && error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(format!("cannot read {path}: {error}")),
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0200580A:1F90 0100580A:D3A4 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0200580A:1F90 0100580A:D3A6 06 00000000:00000000 03:00000A1B 00000000     0        0 0 3 0000000000000000
   3: 0200580A:9C40 0100580A:0016 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
   4: 0200580A:0016 0100580A:E000 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn counts_only_established_sockets_on_the_given_ports() {
        // 0x1F90 = 8080: one listener (0A), one established, one in TIME_WAIT (06).
        assert_eq!(count_established(TABLE, &[8080]), 1);
        // 0x0016 = 22: the inbound SSH session; the outbound one from port 0x9C40 is not.
        assert_eq!(count_established(TABLE, &[22]), 1);
        assert_eq!(count_established(TABLE, &[8080, 22]), 2);
        assert_eq!(count_established(TABLE, &[9090]), 0);
        assert_eq!(count_established("", &[8080]), 0);
        assert_eq!(count_established("header\ngarbage line\n", &[8080]), 0);
    }

    #[test]
    fn reads_ipv6_tables_the_same_way() {
        let table = "  sl  local_address                         remote_address                        st
   0: 0000000000000000FFFF00000200580A:1F90 0000000000000000FFFF00000100580A:D3A4 01 00000000:00000000
";
        assert_eq!(count_established(table, &[8080]), 1);
    }

    #[tokio::test]
    async fn a_process_that_does_not_exist_is_an_error_naming_the_file() {
        let error = established(u32::MAX, &[8080]).await.unwrap_err();
        assert!(error.contains(&format!("/proc/{}/net/tcp", u32::MAX)), "{error}");
    }
}
