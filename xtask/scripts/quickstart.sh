#!/usr/bin/env bash
# Follows the README quickstart step by step: the terminals become background processes and each
# auth code goes from the host's output to the guest's stdin. Uses /tmp/alice, /tmp/bob,
# /tmp/alice-laptop and port 4001, as the README does. Usage: xtask/scripts/quickstart.sh [REPO]
set -eu
REPO=${1:-/work/main}
cd "$REPO"
export PATH="$PWD/target/debug:$PATH"
which echodb
Q=/tmp/qs; rm -rf /tmp/alice /tmp/bob /tmp/alice-laptop /tmp/echodb-signal.key $Q; mkdir -p $Q
PIDS=""
cleanup() { for p in $PIDS; do kill $p 2>/dev/null || true; done; }
trap cleanup EXIT
echodb signal --listen /ip4/127.0.0.1/tcp/4001 --key-file /tmp/echodb-signal.key > $Q/signal.out 2>&1 &
PIDS="$PIDS $!"
sleep 1; cat $Q/signal.out
ADDR=$(grep -o '/ip4/127.0.0.1/tcp/4001/p2p/[A-Za-z0-9]*' $Q/signal.out | head -1)
# terminal 2: alice
export ECHODB_SIGNAL=$ADDR
export ECHODB_VAULT=/tmp/alice
echodb identity create --name alice
SPACE=$(echodb space create --name groceries)
echodb agent > /tmp/alice-agent.log 2>&1 &
ALICE_AGENT=$!; PIDS="$PIDS $!"
sleep 1
echodb space invite "$SPACE" > $Q/invite.out 2>$Q/invite.err &
INV=$!
sleep 2
CODE=$(head -1 $Q/invite.out)
echo "code: ${CODE:0:20}…"
# terminal 3: bob
export ECHODB_VAULT=/tmp/bob
echodb identity create --name bob
echodb agent > /tmp/bob-agent.log 2>&1 &
BOB_AGENT=$!; PIDS="$PIDS $!"
sleep 1
(while [ $(wc -l < $Q/invite.out) -lt 2 ]; do sleep 0.2; done; sed -n 2p $Q/invite.out) | echodb space join "$CODE"
wait $INV; echo "alice's invite exited $?"
SPACE=$(echodb space list | cut -d' ' -f1)
echo "bob sees space $SPACE"
timeout 10 echodb watch "$SPACE" --type task > $Q/watch.out 2>$Q/watch.err &
WP=$!
sleep 1
# terminal 2: alice edits
export ECHODB_VAULT=/tmp/alice
MILK=$(echodb object add "$SPACE" --type task title="buy milk" done=false)
echodb object set "$SPACE" "$MILK" done=true
NOTE=$(echodb text create "$SPACE" --parent "$MILK")
echodb text insert "$SPACE" "$NOTE" 0 "semi-skimmed"
sleep 2; kill $WP || true; wait $WP || true
echo "--- bob's watch:"; cat $Q/watch.out
# offline and back
export ECHODB_VAULT=/tmp/bob
kill $BOB_AGENT; sleep 1
echodb object add "$SPACE" --type task title="bread (written offline)"
ECHODB_VAULT=/tmp/alice echodb object add "$SPACE" --type task title=eggs
echodb agent > /tmp/bob-agent.log 2>&1 &
PIDS="$PIDS $!"
echodb sync "$SPACE"
echo "--- bob:"; echodb query "$SPACE" --type task | tee $Q/bob.txt
echo "--- alice:"; ECHODB_VAULT=/tmp/alice echodb query "$SPACE" --type task | tee $Q/alice.txt
cmp $Q/bob.txt $Q/alice.txt && echo "SAME ON BOTH SIDES"
# a second device
export ECHODB_VAULT=/tmp/alice
echodb device invite > $Q/dinvite.out 2>$Q/dinvite.err &
DINV=$!
sleep 2
DCODE=$(head -1 $Q/dinvite.out)
export ECHODB_VAULT=/tmp/alice-laptop
(while [ $(wc -l < $Q/dinvite.out) -lt 2 ]; do sleep 0.2; done; sed -n 2p $Q/dinvite.out) | echodb device join "$DCODE"
wait $DINV; echo "alice's device invite exited $?"
SPACE=$(echodb space list | cut -d' ' -f1)
echo "--- laptop:"; echodb query "$SPACE" --type task | tee $Q/laptop.txt
cmp $Q/laptop.txt $Q/alice.txt && echo "LAPTOP HAS THE SAME"
ECHODB_VAULT=/tmp/alice echodb device list
echo QUICKSTART OK
