#!/usr/bin/env bash
# Starting a moltops-server for scripts. Source this file, then:
#   server_start DATABASE_URL DATA_DIR LOG_FILE [extra serve flags…]
# which sets SERVER_PID, SERVER_HTTP (host:port), SERVER_GRPC (host:port) and SERVER_CA_PIN once the
# server logs that it is ready (it binds port 0 unless flags say otherwise).

server_start() {
  local url=$1 data=$2 log=$3
  shift 3
  local bin=${MOLTOPS_BIN_DIR:-target/debug}
  : >"$log"
  MOLTOPS_DATABASE_URL=$url "$bin/moltops-server" serve --log-format json --data-dir "$data" \
    --http-addr "${MOLTOPS_HTTP_ADDR:-127.0.0.1:0}" --grpc-addr "${MOLTOPS_GRPC_ADDR:-127.0.0.1:0}" "$@" \
    2>>"$log" >/dev/null &
  SERVER_PID=$!
  local ready i
  for i in $(seq 1 600); do
    ready=$(grep -m1 '"moltops-server ready"' "$log" 2>/dev/null) && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "moltops-server exited during start-up; its log:" >&2
      cat "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  [[ -n $ready ]] || { echo "moltops-server did not become ready; log: $log" >&2; return 1; }
  read -r SERVER_HTTP SERVER_GRPC SERVER_CA_PIN < <(printf '%s' "$ready" |
    python3 -c 'import json,sys; f=json.load(sys.stdin)["fields"]; print(f["http"], f["grpc"], f["ca_pin"])')
  export SERVER_PID SERVER_HTTP SERVER_GRPC SERVER_CA_PIN
}

server_create_token() {
  local url=$1 role=$2 name=$3 bin=${MOLTOPS_BIN_DIR:-target/debug}
  MOLTOPS_DATABASE_URL=$url "$bin/moltops-server" admin create-api-token --role "$role" --name "$name" 2>/dev/null | tail -n 1
}
