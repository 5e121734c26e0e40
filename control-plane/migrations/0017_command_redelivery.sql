-- Commands are delivered until their result arrives ([P4]): a command sent on a stream that
-- ended without its result goes back to the queue when the node's next stream says hello, and the
-- agent's journal answers one it already ran with the recorded result. After five deliveries the
-- command fails as "outcome unknown".
alter table commands add column attempts integer not null default 0;
