-- Every subscription, ordered by name in byte order (read only). See
-- `subscriptions` in common.lua.

return subscriptions()
